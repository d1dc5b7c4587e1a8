// One graphile-worker process for benches/postgres.rs (JOBD_BENCH=speed):
// `node worker.mjs <connection string> <schema>` migrates <schema>, prints
// "ready" once the worker pool runs, and works off the trivial task `noop`
// until SIGTERM (graphile-worker's own graceful shutdown).
//
// The settings are those of graphile-worker's perfTest, batching mode:
// perfTest/graphile.config.js of github.com/graphile/worker (main at
// abfb4cf, the 0.18.0 release line).
import { run } from "graphile-worker";

const [connectionString, schema] = process.argv.slice(2);
const CONCURRENT_JOBS = 24;

const runner = await run({
  preset: {
    worker: {
      connectionString,
      schema,
      gracefulShutdownAbortTimeout: 2500,
      concurrentJobs: CONCURRENT_JOBS,
      maxPoolSize: CONCURRENT_JOBS + 1,
      localQueue: { size: 500, refetchDelay: { durationMs: 10 } },
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
    },
  },
  taskList: {
    noop: () => {},
  },
});
console.log("ready");
await runner.promise;
