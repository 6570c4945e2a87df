// kafka_produce.mjs — an independent Kafka producer for tallyd's Kafka
// tests and bench (kafkajs, not librdkafka, so the consumer is checked
// against another implementation of the protocol).
//
//   node kafka_produce.mjs BROKERS TOPIC FROM COUNT LINES FORMAT POISON_EVERY PAUSE_MS
//
// Produces messages FROM .. FROM+COUNT-1. Message i has key "c" + (i % 8)
// (so a camera's messages stay in one partition, in order) and LINES
// events; event e = i * LINES + j of it is camera c(i % 8), value e % 100,
// time 1700000000 s + e seconds. FORMAT lp: one line-protocol line per
// event, table k, field v (integer); json: NDJSON objects in the default
// json-map's shape (kvfv_id, timestamp, vehicle_speed) into table traffic.
// POISON_EVERY > 0: every message i with i % POISON_EVERY == POISON_EVERY
// - 1 has its first event replaced by one the store refuses. PAUSE_MS:
// sleep between sends of 20 messages (a slow, steady stream). Prints
// "produced N" at the end. tests/test_kafka.c computes the same events in
// C (its brute force).
import { Kafka, logLevel } from 'kafkajs';

const [brokers, topic, fromS, countS, linesS, format = 'lp', poisonS = '0', pauseS = '0'] =
	process.argv.slice(2);
const from = Number(fromS), count = Number(countS), lines = Number(linesS);
const poison = Number(poisonS), pause = Number(pauseS);
const T0 = 1700000000n;

function event(e, cam, bad) {
	const ts = T0 + BigInt(e);
	if (format === 'json') {
		const iso = new Date(Number(ts) * 1000).toISOString();
		return bad ? `{"kvfv_id":"${cam}","timestamp":"${iso}","vehicle_speed":"fast"}`
			   : `{"kvfv_id":"${cam}","timestamp":"${iso}","vehicle_speed":${e % 100}}`;
	}
	return bad ? `k,cam=${cam} v=oops ${ts}000000000` : `k,cam=${cam} v=${e % 100}i ${ts}000000000`;
}

function message(i) {
	const cam = `c${i % 8}`;
	const out = [];
	for (let j = 0; j < lines; j++) {
		const bad = poison > 0 && i % poison === poison - 1 && j === 0;
		out.push(event(i * lines + j, cam, bad));
	}
	return { key: cam, value: out.join('\n') + '\n' };
}

const kafka = new Kafka({ clientId: 'tally-test-producer', brokers: brokers.split(','),
			  logLevel: logLevel.ERROR, retry: { retries: 20 } });
const producer = kafka.producer({ allowAutoTopicCreation: true });
await producer.connect();
let n = 0;
for (let i = from; i < from + count; i += 20) {
	const msgs = [];
	for (let k = i; k < Math.min(i + 20, from + count); k++)
		msgs.push(message(k));
	await producer.send({ topic, messages: msgs, acks: -1 });
	n += msgs.length;
	if (pause > 0)
		await new Promise((r) => setTimeout(r, pause));
}
await producer.disconnect();
console.log(`produced ${n}`);
