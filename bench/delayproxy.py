#!/usr/bin/env python3
"""A TCP delay proxy for the distance benchmark (bench/distance.py): it puts a round-trip time
between a client and what the client talks to, on loopback.

Each mapping `--map LISTEN_PORT=HOST:PORT` listens on 127.0.0.1:LISTEN_PORT and connects every
accepted client to HOST:PORT. Every chunk read on one side is written to the other side RTT/2
after it arrived, in order: a chunk is stamped when it is read and released at stamp + RTT/2, so
the delay is latency only: chunks behind it are read meanwhile and the throughput is not
serialized by it. There is no bandwidth limit and no slow start: a real link that far away
would add round trips for large answers while TCP's congestion window grows.

Connection set-up is not delayed (the TCP handshake completes on loopback); the benchmark times
from the first byte sent.

A control port speaks one command per line, each answered with one line:
  rtt MS    the round-trip time for chunks that arrive from now on      -> ok
  reset     zero the counters                                           -> ok
  stats     the counters, as JSON                                       -> {"maps": {NAME: {"up", "down",
            "connections"}}, "chunks", "late_mean_ms", "late_max_ms", "late_min_ms"}
`up` is bytes from clients to targets, `down` the other way (TCP payload, not IP or TCP headers).
`late_*` is how long after its due time a chunk was written (negative: early). The event loop
sleeps in whole milliseconds (epoll rounds its timeout up), so a chunk is woken for half a
millisecond before its time: the error is then within ±0.5 ms and about 0 on average, instead of
+0.5 ms on average and up to 1 ms. A proxy that cannot keep up shows as growing lateness.

  python3 bench/delayproxy.py --rtt-ms 50 --map 9000=127.0.0.1:8080 --control 9100
"""
import argparse
import asyncio
import json
import sys

CHUNK = 65536
# Half of the event loop's timer granularity (1 ms): see the docstring.
EARLY = 0.0005


class Proxy:
    def __init__(self, rtt_ms):
        self.half_rtt = rtt_ms / 2000.0
        self.counters = {}
        self.reset()

    def reset(self):
        for counter in self.counters.values():
            counter.update(up=0, down=0, connections=0)
        self.chunks, self.late_sum, self.late_max, self.late_min = 0, 0.0, 0.0, 0.0

    def stats(self):
        return {"maps": self.counters, "chunks": self.chunks,
                "late_mean_ms": self.late_sum / self.chunks * 1000 if self.chunks else 0.0,
                "late_max_ms": self.late_max * 1000, "late_min_ms": self.late_min * 1000}

    async def pipe(self, reader, writer, counter, direction):
        """Copy reader to writer, each chunk released half an RTT after it was read. The reading
        and the writing are two tasks joined by a queue, so a chunk waiting for its time does not
        stop the next one from being read."""
        loop = asyncio.get_running_loop()
        queue = asyncio.Queue()

        async def read():
            try:
                while True:
                    data = await reader.read(CHUNK)
                    queue.put_nowait((loop.time() + self.half_rtt, data))
                    if not data:
                        return
                    counter[direction] += len(data)
            except (ConnectionError, OSError):
                queue.put_nowait((loop.time(), b""))

        reading = asyncio.create_task(read())
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time() - EARLY
                if wait > 0:
                    await asyncio.sleep(wait)
                late = loop.time() - due
                self.chunks += 1
                self.late_sum += late
                self.late_max = max(self.late_max, late)
                self.late_min = min(self.late_min, late)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()  # a half-close travels like data: the other side may still answer
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            reading.cancel()

    async def serve(self, name, target_host, target_port, client_reader, client_writer):
        counter = self.counters[name]
        counter["connections"] += 1
        try:
            target_reader, target_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(self.pipe(client_reader, target_writer, counter, "up"),
                                 self.pipe(target_reader, client_writer, counter, "down"))
        finally:
            for w in (client_writer, target_writer):
                w.close()

    async def control(self, reader, writer):
        try:
            while line := await reader.readline():
                command, *args = line.decode().split()
                if command == "rtt":
                    self.half_rtt = float(args[0]) / 2000.0
                    answer = "ok"
                elif command == "reset":
                    self.reset()
                    answer = "ok"
                elif command == "stats":
                    answer = json.dumps(self.stats())
                else:
                    answer = "error: unknown command"
                writer.write(answer.encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError, ValueError, IndexError):
            pass
        finally:
            writer.close()


async def main():
    parser = argparse.ArgumentParser(description="TCP delay proxy: RTT/2 each way, per chunk, order kept.")
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    parser.add_argument("--map", action="append", required=True, metavar="[NAME:]LISTEN_PORT=HOST:PORT")
    parser.add_argument("--control", type=int, required=True, metavar="PORT")
    args = parser.parse_args()
    proxy = Proxy(args.rtt_ms)
    servers = []
    for mapping in args.map:
        listen, target = mapping.split("=", 1)
        name, _, port = listen.rpartition(":")
        host, target_port = target.rsplit(":", 1)
        name = name or port
        proxy.counters[name] = {"up": 0, "down": 0, "connections": 0}

        def handler(r, w, name=name, host=host, target_port=int(target_port)):
            return proxy.serve(name, host, target_port, r, w)

        servers.append(await asyncio.start_server(handler, "127.0.0.1", int(port)))
    servers.append(await asyncio.start_server(proxy.control, "127.0.0.1", args.control))
    print(f"delay proxy: rtt {args.rtt_ms} ms, {len(args.map)} mapping(s), control on {args.control}", file=sys.stderr)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
