#!/usr/bin/env python3
"""Check Flotilla's Grafana dashboard and Prometheus alerts (stdlib only).

Usage:
  check_queries.py structure DASHBOARD.json
      Validate the dashboard's structure: the JSON parses; it has title, uid,
      panels and templating; a `datasource` variable (type datasource) exists;
      every panel has a type, a gridPos and a title; panel ids are unique;
      every panel and target uses the datasource ${datasource}; every target
      has refId and expr; label matchers on a dashboard variable use =~ or !~.
      Exits 1 naming the panel at fault.

  check_queries.py exprs DASHBOARD.json ALERTS.yml
      Print every PromQL expression to check, one per line, as
      `<source>\\t<expr>`:
        * each dashboard target's expr with the Grafana variables substituted:
          $__rate_interval -> 1m, $__interval -> 15s, $__range -> 5m, and any
          other variable ($instance, $run_id, ${x}, ${x:regex}, [[x]]) -> .*
          (so `instance=~"$instance"` becomes `instance=~".*"`);
        * each alert's expr with its trailing ` <op> <number>` cut off.
      ALERTS.yml is read line by line (no PyYAML): `- alert: NAME` and
      `expr: ...` lines. An expr must be a single line of the form
      `<query> <op> <number>` with no other top-level comparison and no
      and/or/unless; anything else fails with a message.

  check_queries.py run PROM_URL DASHBOARD.json ALERTS.yml
      Run each expression of `exprs` through PROM_URL/api/v1/query and fail
      (exit 1) listing every one that errors (ERROR: Prometheus refused it,
      e.g. a parse error) or returns no sample (EMPTY). Prints
      `ok N expressions returned data` on success.

Exit status: 0 ok, 1 check failed, 2 usage error.
"""

import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

DATASOURCE_REF = "${datasource}"

# Grafana's built-in interval variables and what they become for checking.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}

COMPARISON_OPS = ("==", "!=", ">=", "<=", ">", "<")
SET_OPS = ("and", "or", "unless")
NUMBER = r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|Inf|NaN)"
TRAILING_COMPARISON = re.compile(
    r"^(?P<query>.*?\S)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<num>" + NUMBER + r")\s*$", re.S)


class CheckError(Exception):
    """A check failed; the message says where."""


# --------------------------------------------------------------------------
# Dashboard
# --------------------------------------------------------------------------

def load_dashboard(path):
    try:
        with open(path, encoding="utf-8") as f:
            dash = json.load(f)
    except OSError as e:
        raise CheckError(f"{path}: cannot read: {e}")
    except json.JSONDecodeError as e:
        raise CheckError(f"{path}: not valid JSON: {e}")
    if not isinstance(dash, dict):
        raise CheckError(f"{path}: the top level is not a JSON object")
    # An export "for sharing externally" may wrap the model in {"dashboard": ...}.
    if "panels" not in dash and isinstance(dash.get("dashboard"), dict):
        dash = dash["dashboard"]
    return dash


def iter_panels(panels):
    """Every panel, including those nested in (collapsed) rows."""
    for p in panels:
        yield p
        if isinstance(p, dict) and isinstance(p.get("panels"), list):
            yield from iter_panels(p["panels"])


def panel_name(p):
    if not isinstance(p, dict):
        return repr(p)
    return f'panel {p.get("id", "?")} "{p.get("title", "")}"'


def uses_datasource_var(ds):
    if isinstance(ds, str):
        return ds == DATASOURCE_REF or ds == "$datasource"
    if isinstance(ds, dict):
        return ds.get("uid") in (DATASOURCE_REF, "$datasource")
    return False


# A label matcher comparing with = or != against a dashboard variable: with
# "All" or several values selected, the variable expands to a regex, so only
# =~ and !~ work.
EQUALITY_ON_VARIABLE = re.compile(r'(?<![=!~])(=|!=)\s*"(\$\{?[A-Za-z_]\w*|\[\[)')


def check_structure(dash, path):
    errors = []
    for key in ("title", "uid", "panels", "templating"):
        if key not in dash:
            errors.append(f"dashboard has no {key!r}")
    if errors:
        raise CheckError(f"{path}: " + "; ".join(errors))
    if not isinstance(dash["panels"], list) or not dash["panels"]:
        raise CheckError(f"{path}: 'panels' is not a non-empty list")

    variables = dash["templating"].get("list") if isinstance(dash["templating"], dict) else None
    if not isinstance(variables, list):
        raise CheckError(f"{path}: templating has no 'list'")
    names = {v.get("name"): v for v in variables if isinstance(v, dict)}
    ds_var = names.get("datasource")
    if ds_var is None:
        errors.append("no template variable named 'datasource'")
    elif ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus":
        errors.append("template variable 'datasource' must have type 'datasource' and query 'prometheus'")
    for name, v in names.items():
        if name != "datasource" and v.get("type") == "query" and not uses_datasource_var(v.get("datasource")):
            errors.append(f"template variable {name!r} does not use the datasource ${{datasource}}")

    seen_ids = {}
    for p in iter_panels(dash["panels"]):
        where = panel_name(p)
        if not isinstance(p, dict):
            errors.append(f"{where}: not a JSON object")
            continue
        for key in ("type", "title", "gridPos"):
            if not p.get(key) and p.get(key) != 0:
                errors.append(f"{where}: no {key!r}")
        gp = p.get("gridPos")
        if isinstance(gp, dict):
            for k in ("h", "w", "x", "y"):
                if not isinstance(gp.get(k), int):
                    errors.append(f"{where}: gridPos.{k} is not an integer")
        elif gp is not None:
            errors.append(f"{where}: gridPos is not an object")
        pid = p.get("id")
        if pid is None:
            errors.append(f"{where}: no 'id'")
        elif pid in seen_ids:
            errors.append(f"{where}: id {pid} already used by {seen_ids[pid]}")
        else:
            seen_ids[pid] = where

        is_row = p.get("type") == "row"
        if is_row:
            if "datasource" in p and p["datasource"] is not None and not uses_datasource_var(p["datasource"]):
                errors.append(f"{where}: datasource is {json.dumps(p['datasource'])}, not ${{datasource}}")
            continue
        if not uses_datasource_var(p.get("datasource")):
            errors.append(f"{where}: datasource is {json.dumps(p.get('datasource'))}, "
                          f'expected {{"type": "prometheus", "uid": "${{datasource}}"}}')
        targets = p.get("targets")
        if not isinstance(targets, list) or not targets:
            errors.append(f"{where}: no targets")
            continue
        refids = set()
        for i, t in enumerate(targets):
            tw = f"{where} target {i}"
            if not isinstance(t, dict):
                errors.append(f"{tw}: not a JSON object")
                continue
            ref = t.get("refId")
            if not ref:
                errors.append(f"{tw}: no refId")
            elif ref in refids:
                errors.append(f"{tw}: refId {ref!r} used twice")
            refids.add(ref)
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                errors.append(f"{tw} ({ref}): no expr")
            elif EQUALITY_ON_VARIABLE.search(expr):
                errors.append(f"{tw} ({ref}): a label matcher compares a variable with = or !=; "
                              f"use =~ or !~ (multi-value and All expand to regexes): {expr}")
            if "legendFormat" not in t:
                errors.append(f"{tw} ({ref}): no legendFormat")
            if "datasource" in t and not uses_datasource_var(t["datasource"]):
                errors.append(f"{tw} ({ref}): datasource is {json.dumps(t['datasource'])}, not ${{datasource}}")
    if errors:
        raise CheckError(f"{path}:\n  " + "\n  ".join(errors))
    return len(seen_ids)


def substitute_variables(expr):
    def builtin(m):
        name = m.group(1) or m.group(2)
        return BUILTINS[name]

    names = "|".join(sorted(BUILTINS, key=len, reverse=True))
    expr = re.sub(r"\$\{(" + names + r")\}|\$(" + names + r")\b", builtin, expr)
    unknown = re.search(r"\$\{?__\w+", expr)
    if unknown:
        raise CheckError(f"unsupported Grafana built-in variable {unknown.group(0)!r} in: {expr}")
    expr = re.sub(r"\$\{[A-Za-z_]\w*(?::[A-Za-z_]+)?\}", ".*", expr)
    expr = re.sub(r"\[\[[A-Za-z_]\w*(?::[A-Za-z_]+)?\]\]", ".*", expr)
    expr = re.sub(r"\$[A-Za-z_]\w*", ".*", expr)
    return " ".join(expr.split())


def dashboard_exprs(dash, path):
    label = path.rsplit("/", 1)[-1]
    out = []
    for p in iter_panels(dash.get("panels", [])):
        if not isinstance(p, dict):
            continue
        for t in p.get("targets") or []:
            if not isinstance(t, dict) or t.get("hide"):
                continue
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                continue
            title = " ".join(str(p.get("title", "")).split())
            source = f'{label}#{p.get("id")}/{t.get("refId", "?")} {title}'
            out.append((source, substitute_variables(expr)))
    return out


# --------------------------------------------------------------------------
# Alerts
# --------------------------------------------------------------------------

def strip_yaml_scalar(raw, where):
    """The value of a single-line YAML scalar (plain, '...' or "...")."""
    s = raw.strip()
    if not s:
        raise CheckError(f"{where}: expr is empty or not on a single line")
    if s[0] in "|>":
        raise CheckError(f"{where}: expr is a block scalar ({s[0]}); write it on a single line")
    if s[0] == '"':
        end = 1
        while end < len(s):
            if s[end] == "\\":
                end += 2
                continue
            if s[end] == '"':
                break
            end += 1
        if end >= len(s):
            raise CheckError(f"{where}: expr has an unterminated double-quoted string (not single-line?)")
        rest = s[end + 1:].strip()
        if rest and not rest.startswith("#"):
            raise CheckError(f"{where}: unexpected text after the quoted expr: {rest}")
        try:
            return json.loads(s[:end + 1])
        except json.JSONDecodeError as e:
            raise CheckError(f"{where}: cannot read the double-quoted expr: {e}")
    if s[0] == "'":
        m = re.match(r"'((?:[^']|'')*)'\s*(#.*)?$", s)
        if not m:
            raise CheckError(f"{where}: expr has an unterminated single-quoted string (not single-line?)")
        return m.group(1).replace("''", "'")
    # Plain scalar: a comment starts at " #" outside PromQL string literals.
    quote = None
    i = 0
    while i < len(s):
        c = s[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c == "#" and i > 0 and s[i - 1] in " \t":
            return s[:i].rstrip()
        i += 1
    return s


def read_alerts(path):
    """[(name, expr, line_number)] from a Prometheus rules file, line by line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise CheckError(f"{path}: cannot read: {e}")
    alerts = []
    current = None  # [name, expr, line, indent of the rule's keys]
    key_re = re.compile(r"^(\s*)(-\s+)?([A-Za-z_][\w-]*)\s*:(\s|$)(.*)$")
    for no, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = key_re.match(line)
        if m:
            key, value = m.group(3), m.group(5)
            if key == "alert" and m.group(2):
                if current and current[1] is None:
                    raise CheckError(f"{path}:{current[2]}: alert {current[0]} has no expr")
                name = strip_yaml_scalar(value, f"{path}:{no}")
                current = [name, None, no, len(m.group(1)) + len(m.group(2))]
                alerts.append(current)
            elif key == "record" and m.group(2):
                current = None  # recording rules are not alerts
            elif key == "expr" and current is not None:
                where = f"{path}:{no}: alert {current[0]}"
                if current[1] is not None:
                    raise CheckError(f"{where}: a second expr")
                expr = strip_yaml_scalar(value, where)
                # A continuation line (deeper indent, not a key) means a multi-line plain scalar.
                indent = len(m.group(1))
                for nxt in lines[no:]:
                    if not nxt.strip() or nxt.strip().startswith("#"):
                        continue
                    nxt_indent = len(nxt) - len(nxt.lstrip())
                    if nxt_indent > indent and not key_re.match(nxt):
                        raise CheckError(f"{where}: expr continues on the next line; write it on a single line")
                    break
                current[1] = expr
        elif current is not None and current[1] is None:
            pass  # a continuation of some other key: ignored
    if current and current[1] is None:
        raise CheckError(f"{path}:{current[2]}: alert {current[0]} has no expr")
    return [(name, expr, no) for name, expr, no, _ in alerts]


def scan_top_level(query):
    """Top-level comparison operators and set operators (and/or/unless) in a PromQL query.

    Skips string literals, label matchers ({...}), ranges ([...]) and
    parenthesised sub-expressions for comparisons; set operators are reported
    at any depth outside strings and braces.
    """
    comparisons, set_ops = [], []
    depth = 0      # ( and [
    braces = 0     # { label matchers }
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c in "\"'`":
            j = i + 1
            while j < n and query[j] != c:
                j += 2 if query[j] == "\\" and c != "`" else 1
            i = j + 1
            continue
        if c == "{":
            braces += 1
        elif c == "}":
            braces -= 1
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif braces == 0:
            if c.isalpha() or c == "_":
                j = i
                while j < n and (query[j].isalnum() or query[j] in "_:"):
                    j += 1
                word = query[i:j]
                if word in SET_OPS:
                    set_ops.append(word)
                i = j
                continue
            if depth == 0:
                two = query[i:i + 2]
                if two in ("==", "!=", ">=", "<="):
                    comparisons.append(two)
                    i += 2
                    continue
                if c in "<>":
                    comparisons.append(c)
        i += 1
    return comparisons, set_ops


def alert_query(name, expr, where):
    if "\n" in expr:
        raise CheckError(f"{where}: alert {name}: expr is not single-line")
    m = TRAILING_COMPARISON.match(expr)
    if not m:
        raise CheckError(f"{where}: alert {name}: expr does not end in `<op> <number>` "
                         f"(op one of {' '.join(COMPARISON_OPS)}): {expr}")
    query = m.group("query").rstrip()
    comparisons, set_ops = scan_top_level(query)
    if comparisons:
        raise CheckError(f"{where}: alert {name}: more than one top-level comparison "
                         f"({', '.join(comparisons)} before the final {m.group('op')}): {expr}")
    if set_ops:
        raise CheckError(f"{where}: alert {name}: uses {', '.join(sorted(set(set_ops)))}; the query "
                         f"must keep its series (use clamp_min/on(...) arithmetic instead): {expr}")
    return query


def alert_exprs(path):
    label = path.rsplit("/", 1)[-1]
    alerts = read_alerts(path)
    if not alerts:
        raise CheckError(f"{path}: no `- alert:` rules found")
    return [(f"{label}:{no} {name}", alert_query(name, expr, f"{path}:{no}")) for name, expr, no in alerts]


def all_exprs(dashboard_path, alerts_path):
    dash = load_dashboard(dashboard_path)
    return dashboard_exprs(dash, dashboard_path) + alert_exprs(alerts_path)


# --------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------

def query_prometheus(base, expr, timeout):
    """(kind, detail): kind is 'ok', 'empty' or 'error'."""
    url = base.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            payload = json.loads(body)
            return "error", f"HTTP {e.code} {payload.get('errorType', '')}: {payload.get('error', '')}"
        except (ValueError, AttributeError):
            return "error", f"HTTP {e.code}: {body[:200]!r}"
    except (urllib.error.URLError, OSError) as e:
        return "error", f"cannot reach {base}: {e}"
    try:
        payload = json.loads(body)
    except ValueError:
        return "error", f"not JSON: {body[:200]!r}"
    if payload.get("status") != "success":
        return "error", f"{payload.get('errorType', '')}: {payload.get('error', '')}"
    data = payload.get("data") or {}
    result = data.get("result")
    if data.get("resultType") in ("scalar", "string"):
        return "ok", result
    if not result:
        return "empty", "no sample"
    return "ok", f"{len(result)} series"


def run(base, exprs, timeout=10.0):
    errors, empty = [], []
    for source, expr in exprs:
        kind, detail = query_prometheus(base, expr, timeout)
        if kind == "error":
            errors.append((source, expr, detail))
        elif kind == "empty":
            empty.append((source, expr))
    for source, expr, detail in errors:
        print(f"ERROR\t{source}\t{detail}\t{expr}")
    for source, expr in empty:
        print(f"EMPTY\t{source}\t{expr}")
    if errors or empty:
        print(f"failed: {len(errors)} expressions errored, {len(empty)} returned no data, "
              f"{len(exprs) - len(errors) - len(empty)} of {len(exprs)} returned data", file=sys.stderr)
        return 1
    print(f"ok {len(exprs)} expressions returned data")
    return 0


def main(argv):
    if len(argv) >= 2 and argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        if len(argv) == 3 and argv[1] == "structure":
            n = check_structure(load_dashboard(argv[2]), argv[2])
            print(f"ok {argv[2]}: {n} panels")
            return 0
        if len(argv) == 4 and argv[1] == "exprs":
            for source, expr in all_exprs(argv[2], argv[3]):
                print(f"{source}\t{expr}")
            return 0
        if len(argv) == 5 and argv[1] == "run":
            return run(argv[2], all_exprs(argv[3], argv[4]))
    except CheckError as e:
        print(f"check_queries: {e}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
