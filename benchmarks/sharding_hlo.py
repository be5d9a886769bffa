"""Collective volume of one run of a compiled, SPMD-partitioned HLO module.

`collective_bytes` reads `jax.jit(...).lower(...).compile().as_text()`:
every all-gather, all-reduce, reduce-scatter, all-to-all and
collective-permute instruction of the per-device program adds the bytes of
its full buffer (the result, summed over a tuple result; for a
reduce-scatter the operand, result x group size), times the number of
times it runs: once per iteration inside a while loop body (XLA's
`known_trip_count`: scanned layers), once per call elsewhere. It is what
each device hands to collectives per step, not wire bytes (a ring
all-reduce over n devices moves about 2(n-1)/n of it). Part of
`benchmarks/sharding.py`.
"""

import collections
import math
import re

COLLECTIVES = (
  "all-gather",
  "all-reduce",
  "reduce-scatter",
  "all-to-all",
  "collective-permute",
)
_DTYPE_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "s16": 2,
  "u16": 2,
  "f16": 2,
  "bf16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
  "c64": 8,
  "c128": 16,
}
_SHAPE = re.compile(r"\b(pred|[a-z]+\d+\w*)\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*->.*\{\s*$")
_INSTR = re.compile(
  r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<type>.+?)\s(?P<op>[a-z][\w\-]*)\("
)
_CALLS = re.compile(r"\b(calls|to_apply|body|condition)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')


def shape_bytes(text: str) -> int:
  """Bytes of every array shape in an HLO type, e.g. `(f32[2,3], s32[])`."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    size = _DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else None)
    if size is None:
      raise ValueError(f"unknown HLO element type {dtype!r} in {text!r}")
    total += size * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _group_size(line: str, devices: int) -> int:
  """Devices per replica group of a collective instruction."""
  if m := re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line):
    sizes = dict(re.findall(r"'([^']+)'=(\d+)", m[1]))
    return math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", m[2]))
  if m := re.search(r"replica_groups=\[([\d,]+)\]<=", line):
    return math.prod(int(d) for d in m[1].split(",")[1:])
  if m := re.search(r"replica_groups=\{\{([\d,]*)\}", line):
    return len(m[1].split(","))
  return devices


def collective_bytes(hlo: str, devices: int) -> dict:
  """Collective volume of one run of a compiled HLO module (see module doc).

  Args:
    hlo: `compiled.as_text()` of an SPMD-partitioned module.
    devices: the mesh's device count (a collective with no replica groups
      spans them all).

  Returns:
    `{"bytes": total, "by_kind": {kind: bytes}, "ops": {kind: executions},
    "unknown_trip_counts": while loops without a known trip count (each
    counted once)}`.

  Raises:
    ValueError: an asynchronous collective (`-start`/`-done`, GPU/TPU
      schedules; this reads XLA:CPU's synchronous ones) or an unknown
      element type.
  """
  own = collections.defaultdict(collections.Counter)  # comp -> kind -> B
  ops = collections.defaultdict(collections.Counter)
  edges = collections.defaultdict(list)  # comp -> [(callee, times)]
  current, entry, unknown = None, None, 0
  for line in hlo.splitlines():
    if header := _HEADER.match(line):
      current = header[2]
      entry = current if header[1] else entry
      continue
    if current is None or not (m := _INSTR.match(line)):
      continue
    op = m["op"]
    if op.removesuffix("-start").removesuffix("-done") in COLLECTIVES and (
      op not in COLLECTIVES
    ):
      raise ValueError(f"asynchronous collective {op!r} is not counted")
    if op in COLLECTIVES:
      size = shape_bytes(m["type"])
      if op == "reduce-scatter":
        size *= _group_size(line, devices)
      own[current][op] += size
      ops[current][op] += 1
    times = 1
    if op == "while":
      trip = _TRIP.search(line)
      unknown += trip is None
      times = int(trip[1]) if trip else 1
    for field, callee in _CALLS.findall(line):
      edges[current].append((callee, times if field == "body" else 1))
    for branches in _BRANCHES.findall(line):
      for callee in re.findall(r"%?([\w.\-]+)", branches):
        edges[current].append((callee, 1))
  runs = _run_counts(entry, edges)
  by_kind, count = collections.Counter(), collections.Counter()
  for comp, n in runs.items():
    for kind, size in own[comp].items():
      by_kind[kind] += n * size
      count[kind] += n * ops[comp][kind]
  return {
    "bytes": sum(by_kind.values()),
    "by_kind": dict(sorted(by_kind.items())),
    "ops": dict(sorted(count.items())),
    "unknown_trip_counts": unknown,
  }


def _run_counts(entry: str, edges: dict) -> collections.Counter:
  """How often each computation runs per run of `entry` (a call DAG)."""
  order, seen = [], set()

  def visit(comp):  # post-order: callees before their callers
    seen.add(comp)
    for callee, _ in edges.get(comp, ()):
      if callee not in seen:
        visit(callee)
    order.append(comp)

  visit(entry)
  runs = collections.Counter({entry: 1})
  for comp in reversed(order):
    for callee, times in edges.get(comp, ()):
      runs[callee] += runs[comp] * times
  return runs
