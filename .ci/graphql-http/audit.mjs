// graphql-http's server audits (GraphQL over HTTP conformance) against a running server.
// Usage: node audit.mjs http://127.0.0.1:8000/graphql
// Fails on any error or warning. Notices may remain, and only for GET: queries by GET are
// refused on purpose (they would be simple cross-site requests), see the README's Security.
import { serverAudits } from "graphql-http";

const url = process.argv[2];
if (!url) {
  console.error("usage: node audit.mjs <graphql endpoint URL>");
  process.exit(2);
}

const results = [];
for (const audit of serverAudits({ url, fetchFn: fetch })) {
  results.push(await audit.fn());
}

const counts = { ok: 0, notice: 0, warn: 0, error: 0 };
const failures = [];
for (const result of results) {
  counts[result.status] += 1;
  if (result.status === "ok") continue;
  const allowed = result.status === "notice" && /\bGETs?\b/.test(result.name);
  console.log(`${allowed ? "notice (allowed)" : result.status.toUpperCase()}: ${result.name}`);
  console.log(`    ${result.reason}`);
  if (!allowed) failures.push(result);
}
console.log(
  `graphql-http audits: ${counts.ok} passed, ${counts.error} errors, ${counts.warn} warnings, ` +
    `${counts.notice} notices`,
);
process.exit(failures.length ? 1 : 0);
