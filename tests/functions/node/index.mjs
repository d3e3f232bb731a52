// A Node.js function run through the real aws-lambda-ric: answers with an API Gateway proxy
// response, or throws when asked to. It also reports the sandbox it runs in.
import { readFileSync } from "node:fs";
import { hostname } from "node:os";

const seccompMode = () => /^Seccomp:\s*(\d+)/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1];

export const handler = async (event, context) => {
  let body = {};
  try {
    body = typeof event.body === "string" ? JSON.parse(event.body) : event;
  } catch {
    body = {};
  }
  if (body && body.fail) {
    throw new Error("asked to fail");
  }
  return {
    statusCode: 201,
    headers: { "content-type": "application/json", "x-runtime": "node" },
    cookies: ["a=1"],
    body: JSON.stringify({
      node: process.version,
      requestId: context.awsRequestId,
      functionName: context.functionName,
      memory: context.memoryLimitInMB,
      path: event.rawPath,
      sandbox: { seccomp: seccompMode(), pid: process.pid, hostname: hostname() },
      depth: context.clientContext?.Custom?.["gatehouse-lineage-depth"] ?? context.clientContext?.custom?.["gatehouse-lineage-depth"] ?? null,
    }),
  };
};
