// A busy node process for the big-binary row of bench/run: JIT-compiled JavaScript (named
// through /tmp/perf-PID.map when node runs with --perf-basic-prof), JSON, regular
// expressions and allocation, on node's 98 MB executable. Speaks the workloads' protocol
// (workloads/common.h): prints `pid=PID name=node_busy` when ready, SIGUSR1 starts the
// measurement window, SIGINT/SIGTERM stop it with a `result ...` line.
"use strict";

function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

function work() {
  let s = 0;
  for (let i = 0; i < 500; i++) {
    const o = { a: i, b: String(i * 7919), c: [i, i * 2, i * 3] };
    s += JSON.stringify(o).length;
    s += /([0-9]+)/.exec(o.b)[1].length;
  }
  return s + fib(15);
}

const now = () => Number(process.hrtime.bigint()) / 1e9;
const start = now();
let ops = 0, markOps = 0, markAt = null, stopping = false, sink = 0;

process.on("SIGUSR1", () => { if (markAt === null) { markAt = now(); markOps = ops; } });
const stop = () => { stopping = true; };
process.on("SIGINT", stop);
process.on("SIGTERM", stop);

function slice() {
  // ~10 ms of work, then back to the event loop so signals are handled.
  const until = Date.now() + 10;
  while (Date.now() < until) { sink += work(); ops++; }
  if (!stopping) { setImmediate(slice); return; }
  const end = now();
  const from = markAt === null ? start : markAt;
  const wops = ops - (markAt === null ? 0 : markOps);
  const f = (x) => x.toFixed(6);
  console.log(`result name=node_busy ops=${ops} seconds=${f(end - start)} ` +
    `ops_per_sec=${(ops / (end - start)).toFixed(3)} window_ops=${wops} ` +
    `window_seconds=${f(end - from)} window_ops_per_sec=${(wops / (end - from)).toFixed(3)} ` +
    `end_mono=${f(end)} sink=${sink % 1000}`);
}

console.log(`pid=${process.pid} name=node_busy`);
slice();
