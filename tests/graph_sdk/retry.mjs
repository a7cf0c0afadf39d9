// Drives the real Microsoft Graph JS SDK against the gateway: two connector PATCHes in a row,
// where the gateway throttles the second. The SDK's RetryHandler must honour Retry-After and
// succeed. Usage: node retry.mjs <https base URL> <token> <path>
import { Client } from "@microsoft/microsoft-graph-client";

const [baseUrl, token, path] = process.argv.slice(2);
const client = Client.init({
  authProvider: (done) => done(null, token),
  baseUrl,
  defaultVersion: "beta",
  customHosts: new Set(["localhost"]),
});

const started = Date.now();
for (const status of ["inactive", "active"]) {
  const answer = await client.api(path).patch({ status });
  console.log(`patched ${answer.id} to ${answer.status}`);
}
console.log(`done in ${Date.now() - started} ms`);
