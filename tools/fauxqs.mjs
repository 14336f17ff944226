// Starts the SQS emulator quietly with the project's queues. Its CLI logs
// every request; this does not. (fauxqs listens on all interfaces; the
// machines this runs on have no network but loopback and package registries.)
import { startFauxqs } from "fauxqs";

const server = await startFauxqs({
  port: Number(process.env.FAUXQS_PORT ?? 4566),
  logger: false,
  init: process.env.FAUXQS_INIT,
});
console.log(`fauxqs listening on port ${server.port}`);
