"""A TCP proxy that makes a loopback link look like an edge link.

CE-CoLLM (`docs/papers/llm_exits.md` §4.2) prices every cloud request at
RTT + bytes / bandwidth on top of compute. To measure that on one machine,
put this proxy between the edge client and the cloud server:

  python -m jaxexit.serve.netshape --listen 127.0.0.1:0 \\
    --target 127.0.0.1:8000 --rtt-ms 50 --bandwidth-mbit 10 --jitter-ms 5

It prints `listening on HOST:PORT` (flushed) once it accepts connections, and
the bytes it forwarded in each direction when SIGTERM or SIGINT stops it
(exit status 0). In-process, `start_proxy` runs the same proxy in a
background thread. Standard library only.

The model, per direction (`up` is client -> target, `down` the reverse):

* Bandwidth: one serialising transmitter per direction, shared by every
  connection of the proxy, as on a real access link. A chunk of n bytes
  occupies it for n / rate seconds after the chunk arrives and the chunks
  before it (of any connection) are sent. A connection reads its next chunk
  only once the previous one starts transmitting, so a fast sender is
  slowed by TCP back-pressure instead of filling the proxy's memory.
* Delay: once sent, a chunk is delivered rtt / 2 later, plus jitter drawn
  uniformly from [-jitter, +jitter] (the one-way delay is clipped at 0), so
  the mean round trip stays `rtt_ms` while jitter <= rtt / 2. Bytes of one
  connection are never reordered: delivery time is max(previous delivery,
  sent + delay).
* Loss: TCP cannot lose bytes, so `loss` is the probability that a
  1448-byte segment is lost; a chunk with at least one lost segment is
  delivered one extra RTT late (fast retransmit), and everything after it
  on that connection waits too (head-of-line blocking). Congestion-window
  shrinking after a loss is not modelled.
* Connection setup is free (no handshake RTT): reuse connections.

Chunks are at most 64 KiB and at most ~5 ms of serialisation, so delivery
is bursty on that scale only.
"""

import argparse
import asyncio
import dataclasses
import math
import random
import signal
import sys
import threading

_SEGMENT_BYTES = 1448  # TCP payload of a 1500-byte Ethernet frame.
_MAX_CHUNK_BYTES = 64 * 1024
_MIN_CHUNK_BYTES = 1024
_CHUNK_SECONDS = 0.005  # Serialisation granularity at a bandwidth cap.
_QUEUE_CHUNKS = 1024  # In-flight chunks per direction of one connection.


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShapedLink:
  """How the proxy shapes traffic (the same for both directions).

  Attributes:
    rtt_ms: round-trip time in milliseconds; each direction adds half.
    bandwidth_mbit: cap per direction in Mbit/s (10**6 bits per second),
      shared by all connections of one proxy; 0 means no cap.
    jitter_ms: half-width in milliseconds of the uniform jitter added to
      each one-way delay.
    loss: probability in [0, 1) that a 1448-byte segment is lost, modelled
      as a one-RTT retransmission stall.
    seed: seed of the jitter and loss draws.
  """

  rtt_ms: float | int = 0.0
  bandwidth_mbit: float | int = 0.0
  jitter_ms: float | int = 0.0
  loss: float | int = 0.0
  seed: int = 0

  def __post_init__(self):
    for name in ("rtt_ms", "bandwidth_mbit", "jitter_ms"):
      value = getattr(self, name)
      if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value} must be finite and >= 0")
    if not 0 <= self.loss < 1:
      raise ValueError(f"loss={self.loss} must be in [0, 1)")

  @property
  def one_way_s(self) -> float:
    """Mean one-way delay in seconds."""
    return self.rtt_ms / 2000

  @property
  def bytes_per_s(self) -> float:
    """Bandwidth cap in bytes per second (inf without a cap)."""
    return self.bandwidth_mbit * 1e6 / 8 or math.inf

  @property
  def chunk_bytes(self) -> int:
    """Largest chunk read at once: ~5 ms of serialisation, in bytes."""
    size = self.bytes_per_s * _CHUNK_SECONDS
    return int(min(_MAX_CHUNK_BYTES, max(_MIN_CHUNK_BYTES, size)))


@dataclasses.dataclass
class LinkStats:
  """What a proxy forwarded (updated by its event loop).

  Attributes:
    bytes_up: bytes delivered client -> target.
    bytes_down: bytes delivered target -> client.
    connections: connections opened to the target.
  """

  bytes_up: int = 0
  bytes_down: int = 0
  connections: int = 0


def parse_address(text: str) -> tuple[str, int]:
  """Splits `HOST:PORT` (IPv6 as `[::1]:PORT`) into (host, port)."""
  host, sep, port = text.rpartition(":")
  if not sep or not host or not port.isdigit() or int(port) > 65535:
    raise ValueError(f"address {text!r} is not HOST:PORT")
  return host.strip("[]"), int(port)


class Proxy:
  """The shaping proxy on the running asyncio loop (see the module doc).

  Args:
    listen: (host, port) to listen on; port 0 picks a free one.
    target: (host, port) every connection is forwarded to.
    link: the shaping.
  """

  def __init__(
    self, listen: tuple[str, int], target: tuple[str, int], link: ShapedLink
  ):
    self.listen, self.target, self.link = listen, target, link
    self.stats = LinkStats()
    self._rng = random.Random(link.seed)
    # Loop time (s) when each direction's shared transmitter is next idle.
    self._free_at = {"up": 0.0, "down": 0.0}
    self._tasks: set[asyncio.Task] = set()
    self._server: asyncio.Server | None = None

  @property
  def address(self) -> tuple[str, int]:
    """(host, port) actually listened on."""
    assert self._server is not None, "proxy not started"
    host, port = self._server.sockets[0].getsockname()[:2]
    return host, port

  async def start(self) -> None:
    self._server = await asyncio.start_server(self._serve, *self.listen)

  async def aclose(self) -> None:
    """Stops listening and closes every connection."""
    if self._server is not None:
      self._server.close()
    tasks = list(self._tasks)
    for task in tasks:
      task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if self._server is not None:
      await asyncio.wait_for(self._server.wait_closed(), timeout=5)

  async def _serve(
    self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter
  ) -> None:
    task = asyncio.current_task()
    self._tasks.add(task)
    try:
      await self._forward(c_reader, c_writer)
    except asyncio.CancelledError:
      pass  # aclose(); Python 3.12.1's streams log a cancelled handler.
    finally:
      c_writer.close()
      self._tasks.discard(task)

  async def _forward(
    self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter
  ) -> None:
    t_writer = None
    try:
      t_reader, t_writer = await asyncio.open_connection(*self.target)
      self.stats.connections += 1
      async with asyncio.TaskGroup() as group:
        group.create_task(self._pipe(c_reader, t_writer, "up"))
        group.create_task(self._pipe(t_reader, c_writer, "down"))
    except* (OSError, asyncio.IncompleteReadError):
      pass  # A reset or refused connection closes both sides.
    finally:
      if t_writer is not None:
        t_writer.close()

  async def _pipe(
    self,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    direction: str,
  ) -> None:
    queue = asyncio.Queue(maxsize=_QUEUE_CHUNKS)
    async with asyncio.TaskGroup() as group:
      group.create_task(self._deliver(queue, writer, direction))
      await self._transmit(reader, queue, direction)

  def _delay_s(self, nbytes: int) -> float:
    """One-way delay in seconds of a chunk of `nbytes`, loss stall included."""
    link = self.link
    delay = link.one_way_s
    if link.jitter_ms:
      jitter_s = link.jitter_ms / 1000
      delay = max(0.0, delay + self._rng.uniform(-jitter_s, jitter_s))
    if link.loss:
      segments = -(-nbytes // _SEGMENT_BYTES)
      if self._rng.random() < 1 - (1 - link.loss) ** segments:
        delay += link.rtt_ms / 1000
    return delay

  async def _transmit(
    self, reader: asyncio.StreamReader, queue: asyncio.Queue, direction: str
  ) -> None:
    """Reads chunks, stamps their delivery time (loop seconds), queues them."""
    loop = asyncio.get_running_loop()
    last_delivery = 0.0
    while True:
      data = await reader.read(self.link.chunk_bytes)
      now = loop.time()
      start = max(now, self._free_at[direction])
      sent = start + len(data) / self.link.bytes_per_s
      if data:
        self._free_at[direction] = sent
      delivery = max(last_delivery, sent + self._delay_s(len(data)))
      last_delivery = delivery
      await queue.put((delivery, data))
      if not data:
        return  # EOF travels behind the last bytes.
      # Back-pressure: read on once this chunk starts transmitting.
      await asyncio.sleep(max(0.0, start - loop.time()))

  async def _deliver(
    self, queue: asyncio.Queue, writer: asyncio.StreamWriter, direction: str
  ) -> None:
    loop = asyncio.get_running_loop()
    while True:
      delivery, data = await queue.get()
      await asyncio.sleep(max(0.0, delivery - loop.time()))
      if not data:
        if writer.can_write_eof():
          writer.write_eof()
        return
      if direction == "up":
        self.stats.bytes_up += len(data)
      else:
        self.stats.bytes_down += len(data)
      writer.write(data)
      await writer.drain()


class ProxyHandle:
  """A proxy whose event loop runs in a daemon thread (from `start_proxy`).

  Attributes:
    host: host listened on.
    port: port listened on.
    link: the shaping.
    stats: live byte counters (`LinkStats`).
  """

  def __init__(self, proxy: Proxy):
    self._proxy, self._loop = proxy, asyncio.new_event_loop()
    self.link, self.stats = proxy.link, proxy.stats
    self._thread = threading.Thread(
      target=self._loop.run_forever, name="netshape", daemon=True
    )
    self._thread.start()
    # Started from the thread's loop, so this works even when the caller
    # runs an event loop of its own (Jupyter, Colab).
    try:
      self._call(proxy.start(), timeout_s=30)
    except BaseException:
      self._stop(timeout_s=10)
      raise
    self.host, self.port = proxy.address

  def _call(self, coro, timeout_s: float | int):
    return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

  def _stop(self, timeout_s: float | int) -> None:
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join(timeout_s)
    self._loop.close()

  @property
  def bytes_up(self) -> int:
    """Bytes delivered client -> target so far."""
    return self.stats.bytes_up

  @property
  def bytes_down(self) -> int:
    """Bytes delivered target -> client so far."""
    return self.stats.bytes_down

  def close(self, timeout_s: float | int = 10.0) -> None:
    """Closes every socket and stops the thread (waits up to `timeout_s`)."""
    if self._loop.is_closed():
      return
    try:
      self._call(self._proxy.aclose(), timeout_s)
    finally:
      self._stop(timeout_s)

  def __enter__(self) -> "ProxyHandle":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def start_proxy(
  listen: str | tuple[str, int],
  target: str | tuple[str, int],
  *,
  link: ShapedLink | None = None,
  **shape,
) -> ProxyHandle:
  """Starts a shaping proxy in a daemon thread; returns once it listens.

  Args:
    listen: `HOST:PORT` or (host, port); port 0 picks a free port.
    target: `HOST:PORT` or (host, port) to forward to.
    link: the shaping; or give its fields as keywords (`rtt_ms=60`, ...).

  Returns:
    A `ProxyHandle` with `.port`, byte counters and `.close()`.
  """
  if link is None:
    link = ShapedLink(**shape)
  elif shape:
    raise ValueError(f"give link= or shape keywords, not both: {shape}")
  if isinstance(listen, str):
    listen = parse_address(listen)
  if isinstance(target, str):
    target = parse_address(target)
  return ProxyHandle(Proxy(listen, target, link))


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m jaxexit.serve.netshape", description=__doc__.split("\n")[0]
  )
  p.add_argument("--listen", required=True, help="HOST:PORT (port 0: any)")
  p.add_argument("--target", required=True, help="HOST:PORT to forward to")
  p.add_argument("--rtt-ms", type=float, default=0.0, help="round trip, ms")
  p.add_argument(
    "--bandwidth-mbit", type=float, default=0.0, help="Mbit/s, 0: no cap"
  )
  p.add_argument("--jitter-ms", type=float, default=0.0, help="+/- ms")
  p.add_argument("--loss", type=float, default=0.0, help="segment loss prob.")
  p.add_argument("--seed", type=int, default=0)
  return p


async def _serve_until_signalled(proxy: Proxy) -> None:
  stop = asyncio.Event()
  loop = asyncio.get_running_loop()
  # Handlers first: a parent may signal as soon as it reads the line.
  for sig in (signal.SIGTERM, signal.SIGINT):
    loop.add_signal_handler(sig, stop.set)
  await proxy.start()
  host, port = proxy.address
  print(f"listening on {host}:{port}", flush=True)
  await stop.wait()
  await proxy.aclose()


def main(argv: list[str] | None = None) -> int:
  """Runs the proxy until SIGTERM/SIGINT; prints the byte counts; returns 0."""
  args = _parser().parse_args(argv)
  try:
    fields = dataclasses.fields(ShapedLink)  # Same names as the flags.
    link = ShapedLink(**{f.name: getattr(args, f.name) for f in fields})
    proxy = Proxy(parse_address(args.listen), parse_address(args.target), link)
  except ValueError as e:
    print(f"netshape: {e}", file=sys.stderr)
    return 2
  asyncio.run(_serve_until_signalled(proxy))
  st = proxy.stats
  print(
    f"netshape: bytes up={st.bytes_up} down={st.bytes_down} "
    f"connections={st.connections}",
    flush=True,
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
