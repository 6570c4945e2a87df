// questdb_client.mjs — writes rows to tallyd with QuestDB's official Node.js
// client over its TCP (InfluxDB line protocol) transport, unchanged, to show
// that existing clients write to tally as they are.
//
//   node tests/server/questdb_client.mjs PORT ROWS
//
// Rows: table "qdb", symbol camera=QD<i % 10>, float speed = i / 4, int lane,
// string plate, boolean ok, timestamp 2023-11-14T00:00:00Z + i seconds (ns).
import { Sender } from "@questdb/nodejs-client";

const port = Number(process.argv[2]);
const rows = Number(process.argv[3] ?? 1000);
if (!port || !rows) {
  console.error("usage: questdb_client.mjs PORT ROWS");
  process.exit(2);
}
const base = 1699920000n * 1000000000n;
const sender = await Sender.fromConfig(`tcp::addr=127.0.0.1:${port};auto_flush_rows=500`);
await sender.connect();
for (let i = 0; i < rows; i++) {
  await sender
    .table("qdb")
    .symbol("camera", `QD${i % 10}`)
    .floatColumn("speed", i / 4)
    .intColumn("lane", i % 3)
    .stringColumn("plate", `P-${i}`)
    .booleanColumn("ok", i % 2 === 0)
    .at(base + BigInt(i) * 1000000000n, "ns");
}
await sender.flush();
await sender.close();
console.log(`sent ${rows} rows`);
