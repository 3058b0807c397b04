#!/usr/bin/env python3
"""Convert FedScale's device traces into Flotilla's CSV trace formats.

    scripts/fedscale-traces.py [options] CAPACITY.pkl BEHAVIOUR.pkl OUTDIR

CAPACITY.pkl is FedScale's device-capacity trace (`client_device_capacity`): a dict mapping a
client id to {'computation': ms per sample, 'communication': kbit/s}; optional keys 'up' and
'down' (kbit/s) give the two directions separate bandwidths. It becomes OUTDIR/devices.csv,
`client,compute-speed,up-bandwidth,down-bandwidth`, with

    compute-speed = REFERENCE_MS / computation        (--reference-ms-per-sample, default 1.0:
                                                       simulation.example-seconds = 0.001;
                                                       `median`: the trace's median device is 1)
    bandwidth     = communication * 1000 / 8          (bytes per second; inf = 0 = unlimited)

BEHAVIOUR.pkl is FedScale's availability trace (`client_behave_trace`): a dict mapping a client
id to {'active': [s], 'inactive': [s], 'finish_time': s, ...}, where active[i] and inactive[i]
start the i-th online period and the offline period after it, and the pattern repeats every
finish_time seconds. It becomes OUTDIR/availability.csv, `client,online,offline`: every window
[active[i], inactive[i]) (or up to finish_time when inactive[i] is missing), clipped to
[0, finish_time), repeated every finish_time seconds up to --horizon (default 86400 s) and
clipped there; overlapping or touching windows are merged. A client with no online time before
the horizon gets the one window [HORIZON, HORIZON + 1): Flotilla gives a client the trace does
not name the profile's own availability (by default always online), so leaving it out would turn
a never-online device into an always-online one.

Either input may be `-` to skip it. Client ids: FedScale's are arbitrary; by default the ids of
both files together are sorted (numerically) and renumbered 0..N-1, the mapping written to
OUTDIR/ids.csv (`flotilla,fedscale`); --keep-ids keeps them (they must then be integers in
0..2^32-1). --limit N keeps the first N clients (sorted ids) before renumbering.

The pickles are read with an unpickler that builds plain Python data only (dicts, lists,
numbers, strings); --any-pickle lifts that (it runs whatever code the pickle names: only for
files you trust, e.g. ones holding numpy scalars, with numpy installed).
"""

import argparse
import csv
import io
import math
import os
import pickle
import statistics
import sys

FLOTILLA_TRACE_LIMIT = 64 << 20  # Flotilla refuses trace files larger than this


class ConversionError(Exception):
    pass


class PlainUnpickler(pickle.Unpickler):
    """Builds builtin containers and scalars only; refuses any other class or function."""

    ALLOWED = {
        ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
        ("builtins", "frozenset"), ("builtins", "int"), ("builtins", "float"),
        ("builtins", "str"), ("builtins", "bytes"), ("builtins", "bool"),
        ("builtins", "complex"), ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        # Python 2 pickles
        ("__builtin__", "dict"), ("__builtin__", "list"), ("__builtin__", "set"),
        ("__builtin__", "int"), ("__builtin__", "long"), ("__builtin__", "float"),
        ("__builtin__", "unicode"), ("__builtin__", "str"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise ConversionError(
            f"the pickle refers to {module}.{name}; only plain Python data is read "
            "(--any-pickle reads any pickle, running the code it names: trusted files only)")


def load_pickle(path, any_pickle):
    try:
        with open(path, "rb") as f:
            if any_pickle:
                data = pickle.load(f, encoding="latin1")
            else:
                data = PlainUnpickler(f, encoding="latin1").load()
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None
    except OSError as e:
        raise ConversionError(f"{path}: cannot read: {e.strerror or e}") from None
    except Exception as e:  # a truncated or foreign file: UnpicklingError, EOFError, ...
        raise ConversionError(f"{path}: not a readable pickle: {type(e).__name__}: {e}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a dict of client id -> record, "
                              f"got {type(data).__name__}")
    return data


def normalise_id(path, raw):
    """A FedScale id as a sort key: (0, int) for integer ids, (1, str) for any other."""
    if isinstance(raw, bool):
        raise ConversionError(f"{path}: client id {raw!r} is not an id")
    if isinstance(raw, int):
        return (0, raw)
    if isinstance(raw, float) and raw.is_integer():
        return (0, int(raw))
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if isinstance(raw, str):
        text = raw.strip()
        try:
            return (0, int(text))
        except ValueError:
            return (1, text)
    raise ConversionError(f"{path}: client id {raw!r} is neither an integer nor a string")


def keyed(path, data):
    """The trace's records keyed by normalised id; two spellings of one id are an error."""
    out, spelled = {}, {}
    for raw, record in data.items():
        key = normalise_id(path, raw)
        if key in out:
            raise ConversionError(f"{path}: client ids {spelled[key]!r} and {raw!r} are the same id")
        out[key], spelled[key] = record, raw
    return out


def show(key):
    return str(key[1])


def number(path, key, record, field, required=True):
    if not isinstance(record, dict):
        raise ConversionError(f"{path}: client {show(key)}: expected a dict record, "
                              f"got {type(record).__name__}")
    if field not in record:
        if not required:
            return None
        raise ConversionError(f"{path}: client {show(key)}: record has no '{field}' "
                              f"(keys: {', '.join(map(str, record)) or 'none'})")
    value = record[field]
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ConversionError(f"{path}: client {show(key)}: '{field}' is not a number: "
                              f"{value!r}") from None


def fmt(x):
    """Shortest text that reads back as x; integral values without a decimal point."""
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(float(x))


def device_row(path, key, record, reference_ms):
    computation = number(path, key, record, "computation")
    if not (math.isfinite(computation) and computation > 0):
        raise ConversionError(f"{path}: client {show(key)}: computation must be a finite number "
                              f"of milliseconds per sample > 0, got {computation!r}")
    speed = reference_ms / computation
    if not (math.isfinite(speed) and speed > 0):
        raise ConversionError(f"{path}: client {show(key)}: compute-speed {reference_ms!r} / "
                              f"{computation!r} is not a finite number > 0")
    communication = number(path, key, record, "communication",
                           required=not ("up" in record and "down" in record))
    bandwidths = []
    for field in ("up", "down"):
        kbits = number(path, key, record, field, required=False)
        name = field
        if kbits is None:
            kbits, name = communication, "communication"
        if math.isnan(kbits) or kbits <= 0:
            # Flotilla reads a bandwidth of 0 as unlimited: the opposite of what 0 kbit/s means.
            raise ConversionError(f"{path}: client {show(key)}: {name} must be kbit/s > 0, "
                                  f"got {kbits!r}")
        bandwidths.append(0.0 if math.isinf(kbits) else kbits * 1000 / 8)
    return speed, bandwidths[0], bandwidths[1]


def pattern(path, key, record):
    """One period's online windows [start, end) within [0, finish_time), merged and sorted."""
    finish = number(path, key, record, "finish_time")
    if not (math.isfinite(finish) and finish > 0):
        raise ConversionError(f"{path}: client {show(key)}: finish_time must be > 0, got {finish!r}")
    lists = {}
    for field in ("active", "inactive"):
        if field not in record:
            raise ConversionError(f"{path}: client {show(key)}: record has no '{field}' "
                                  f"(keys: {', '.join(map(str, record)) or 'none'})")
        values = record[field]
        if isinstance(values, (int, float)) and not isinstance(values, bool):
            values = [values]
        if not isinstance(values, (list, tuple)):
            raise ConversionError(f"{path}: client {show(key)}: '{field}' is not a list of "
                                  f"numbers: {values!r}")
        try:
            lists[field] = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ConversionError(f"{path}: client {show(key)}: '{field}' is not a list of "
                                  f"numbers: {values!r}") from None
        bad = [v for v in lists[field] if not math.isfinite(v)]
        if bad:
            raise ConversionError(f"{path}: client {show(key)}: '{field}' holds {bad[0]!r}")
    active, inactive = lists["active"], lists["inactive"]
    windows = []
    for i, start in enumerate(active):
        end = inactive[i] if i < len(inactive) else finish
        start, end = max(start, 0.0), min(end, finish)
        if end > start:
            windows.append((start, end))
    windows.sort()
    merged = []
    for start, end in windows:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return finish, merged


def unroll(finish, windows, horizon):
    out = []
    if not windows:
        return out
    period = 0
    while period * finish < horizon:
        base = period * finish
        for start, end in windows:
            on, off = base + start, min(base + end, horizon)
            if on >= horizon:
                break
            if out and on <= out[-1][1]:  # touching across the period boundary
                out[-1] = (out[-1][0], max(out[-1][1], off))
            else:
                out.append((on, off))
        period += 1
    return out


def write_csv(path, header, rows):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    text = buf.getvalue()
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    if len(text.encode()) > FLOTILLA_TRACE_LIMIT:
        print(f"warning: {path} is {len(text.encode()) >> 20} MiB; Flotilla refuses trace files "
              "over 64 MiB (use --limit or a shorter --horizon)", file=sys.stderr)


def reference(text):
    if text == "median":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'median', got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="fedscale-traces.py",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See docs/simulation.md, section Traces.")
    p.add_argument("capacity", metavar="CAPACITY.pkl",
                   help="FedScale client_device_capacity pickle, or - to skip")
    p.add_argument("behaviour", metavar="BEHAVIOUR.pkl",
                   help="FedScale client_behave_trace pickle, or - to skip")
    p.add_argument("outdir", metavar="OUTDIR", help="directory for the CSV files (created)")
    p.add_argument("--reference-ms-per-sample", type=reference, default=1.0, metavar="X",
                   help="milliseconds per sample of the reference device (compute-speed 1); "
                        "default 1.0, matching simulation.example-seconds = 0.001; 'median': "
                        "the median computation of the (kept) clients, so that device has "
                        "speed 1 and the task-time distribution describes it")
    p.add_argument("--horizon", type=float, default=86400.0, metavar="S",
                   help="seconds of availability to unroll (default 86400)")
    ids = p.add_mutually_exclusive_group()
    ids.add_argument("--renumber", dest="renumber", action="store_true", default=True,
                     help="map the sorted FedScale ids to 0..N-1 and write ids.csv (default)")
    ids.add_argument("--keep-ids", dest="renumber", action="store_false",
                     help="keep FedScale's ids (non-negative integers)")
    p.add_argument("--limit", type=int, metavar="N",
                   help="keep only the first N clients (sorted ids)")
    p.add_argument("--any-pickle", action="store_true",
                   help="unpickle anything, running the code it names (trusted files only)")
    a = p.parse_args(argv)
    if not (math.isfinite(a.horizon) and a.horizon > 0):
        p.error(f"--horizon must be > 0, got {a.horizon}")
    if a.limit is not None and a.limit < 1:
        p.error(f"--limit must be >= 1, got {a.limit}")
    if a.capacity == "-" and a.behaviour == "-":
        p.error("both inputs are '-': nothing to convert")
    return a


def convert(a):
    capacity = behaviour = None
    if a.capacity != "-":
        capacity = keyed(a.capacity, load_pickle(a.capacity, a.any_pickle))
    if a.behaviour != "-":
        behaviour = keyed(a.behaviour, load_pickle(a.behaviour, a.any_pickle))

    keys = sorted(set(capacity or ()) | set(behaviour or ()))
    if a.limit is not None:
        keys = keys[:a.limit]
    if a.renumber:
        flotilla_id = {k: i for i, k in enumerate(keys)}
    else:
        flotilla_id = {}
        for k in keys:
            where = a.capacity if capacity is not None and k in capacity else a.behaviour
            if k[0] != 0 or not 0 <= k[1] < 2 ** 32:
                raise ConversionError(f"{where}: client id {show(k)!r} is not an integer in "
                                      "0..4294967295, as --keep-ids needs (drop --keep-ids to "
                                      "renumber)")
            flotilla_id[k] = k[1]

    # Everything is checked before anything is written.
    outputs = []
    if capacity is not None:
        reference_ms = a.reference_ms_per_sample
        if reference_ms == "median":
            # Checked with reference 1 first, so that a bad record is named before the median.
            kept = [k for k in keys if k in capacity]
            for k in kept:
                device_row(a.capacity, k, capacity[k], 1.0)
            if not kept:
                raise ConversionError(f"{a.capacity}: no clients to write")
            reference_ms = statistics.median(number(a.capacity, k, capacity[k], "computation")
                                             for k in kept)
            print(f"reference device: {fmt(reference_ms)} ms per sample (the median)",
                  file=sys.stderr)
        rows = []
        for k in keys:
            if k in capacity:
                speed, up, down = device_row(a.capacity, k, capacity[k], reference_ms)
                rows.append((flotilla_id[k], fmt(speed), fmt(up), fmt(down)))
        if not rows:
            raise ConversionError(f"{a.capacity}: no clients to write")
        outputs.append(("devices.csv", ("client", "compute-speed", "up-bandwidth",
                                        "down-bandwidth"), rows, f"{len(rows)} clients"))
    if behaviour is not None:
        rows, never = [], []
        for k in keys:
            if k not in behaviour:
                continue
            finish, windows = pattern(a.behaviour, k, behaviour[k])
            unrolled = unroll(finish, windows, a.horizon)
            if not unrolled:
                never.append(show(k))
                unrolled = [(a.horizon, a.horizon + 1)]
            rows.extend((flotilla_id[k], fmt(on), fmt(off)) for on, off in unrolled)
        if not rows:
            raise ConversionError(f"{a.behaviour}: no clients to write")
        if never:
            shown = ", ".join(never[:10]) + (f" and {len(never) - 10} more" if len(never) > 10 else "")
            print(f"warning: {a.behaviour}: {len(never)} client(s) never online before the "
                  f"horizon ({shown}): written as one window starting at the horizon",
                  file=sys.stderr)
        clients = len({r[0] for r in rows})
        outputs.append(("availability.csv", ("client", "online", "offline"), rows,
                        f"{clients} clients, {len(rows)} windows"))
    if a.renumber:
        outputs.append(("ids.csv", ("flotilla", "fedscale"),
                        [(flotilla_id[k], show(k)) for k in keys], f"{len(keys)} clients"))

    try:
        os.makedirs(a.outdir, exist_ok=True)
        for name, header, rows, summary in outputs:
            path = os.path.join(a.outdir, name)
            write_csv(path, header, rows)
            print(f"wrote {path}: {summary}")
    except OSError as e:
        raise ConversionError(f"{e.filename or a.outdir}: cannot write: {e.strerror or e}") from None


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        convert(a)
    except ConversionError as e:
        print(f"fedscale-traces.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
