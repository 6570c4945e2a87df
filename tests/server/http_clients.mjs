// http_clients.mjs — writes rows to tallyd's HTTP port with real client
// libraries, unchanged: InfluxDB's v2 client (gzip on) and QuestDB's
// client over HTTP (protocol_version auto: it asks /settings first).
//
//   node tests/server/http_clients.mjs influx|questdb HTTP_PORT TOKEN TABLE ROWS
//
// Rows: tag camera=N<i % 11>, float speed = ((i * 29) % 1001) / 4, int
// lane, string plate; time 2023-11-14T00:00:00Z + i seconds.
// $TALLY_TLS_CA (a CA certificate file): HTTPS, verified against it
// (https_test.py).
// http_test.py checks tally's answers against the same formula.
import { InfluxDB, Point } from "@influxdata/influxdb-client";
import { Sender } from "@questdb/nodejs-client";
import { readFileSync } from "node:fs";

const [client, port, token, table, rowsArg] = process.argv.slice(2);
const rows = Number(rowsArg);
if (!client || !Number(port) || !token || !table || !rows) {
  console.error("usage: http_clients.mjs influx|questdb HTTP_PORT TOKEN TABLE ROWS");
  process.exit(2);
}
const base = 1699920000;
const speed = (i) => ((i * 29) % 1001) / 4;
const ca = process.env.TALLY_TLS_CA;
const scheme = ca ? "https" : "http";

if (client === "influx") {
  // gzipThreshold 1: every batch is sent gzip-compressed.
  const db = new InfluxDB({
    url: `${scheme}://127.0.0.1:${port}`,
    token,
    transportOptions: ca ? { ca: readFileSync(ca) } : {},
  });
  const w = db.getWriteApi("any-org", "any-bucket", "s", {
    gzipThreshold: 1,
    batchSize: 5000,
    maxRetries: 0,
  });
  for (let i = 0; i < rows; i++) {
    w.writePoint(
      new Point(table)
        .tag("camera", `N${i % 11}`)
        .floatField("speed", speed(i))
        .intField("lane", i % 3)
        .stringField("plate", `P-${i}`)
        .timestamp(base + i),
    );
  }
  await w.close();
} else if (client === "questdb") {
  const sender = await Sender.fromConfig(
    `${scheme}::addr=127.0.0.1:${port};token=${token};auto_flush_rows=1000` +
      (ca ? `;tls_ca=${ca}` : ""),
  );
  for (let i = 0; i < rows; i++) {
    await sender
      .table(table)
      .symbol("camera", `N${i % 11}`)
      .floatColumn("speed", speed(i))
      .intColumn("lane", i % 3)
      .stringColumn("plate", `P-${i}`)
      .at(BigInt(base + i) * 1000000000n, "ns");
  }
  await sender.flush();
  await sender.close();
} else {
  console.error(`unknown client ${client}`);
  process.exit(2);
}
console.log(`${client}: sent ${rows} rows`);
