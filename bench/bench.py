#!/usr/bin/env python3
"""log-processor benchmark against a Benthos peer and against raw ceilings.

Run through bench/run.sh (full) or bench/smoke.sh (tiny). Needs the services up (tests/infra),
the release binary and examples/ceiling_loader built, the peer built (bench/build-peer.sh);
matplotlib for the plot.

Phases, all on one pre-loaded topic (well-formed loadgen records, 6 partitions), every one at the
same commit (checked before each phase; the run stops if the code changes under it):
  e2e       log-processor at its best documented configuration (LP_BEST) and the peer tuned
            (PEER_TUNED, bench/peer/README.md), alternating, --runs times; each at defaults
            --default-runs times (the peer at defaults on --peer-default-records). Fresh
            group/schema/index each run: time from process start until PostgreSQL and OpenSearch
            both hold every record; CPU of the process over its whole life and of each service
            during the run (exited processes included, see reap() and tree_cpu()); peak RSS.
  ceilings  kcat consuming the topic; the plain loader (examples/ceiling_loader.rs) writing the
            same rows and documents to PostgreSQL (COPY), OpenSearch (_bulk) and both at once,
            each swept over bulk size and concurrency (CEILING_GRID, --sweep-records), the best
            point re-run on every record, --runs times. Each combined-ceiling run is paired with a
            run of log-processor at its best configuration right before or after it (alternating):
            ratio_combined compares these pairs, so a machine that speeds up or slows down during
            the benchmark moves both sides of the ratio alike.
  batch     LP_BATCH_MAX_RECORDS sweep: steady-state throughput and SIGTERM-to-exit under load.
  growth    log-processor at defaults on 1, 6, 24, 96 partitions and on 200 B, 2 KiB, 20 KiB
            records: records/s, MiB/s, CPU per record, peak RSS.
  partitions log-processor at its best configuration on 1, 2, 6 and 24 partitions, with one batch
            at a time per worker (LP_WORKER_IN_FLIGHT=1, as before in-partition pipelining) and
            two (2, the default), alternating at each point: records/s, CPU per record, and each
            point's share of the 6-partition throughput.
  mapping   the best configuration with and without a five-column mapping (bench/mapping-5.toml),
            alternating, --runs times: ratio_typed, the cost of typed columns.
  freshness a steady produce rate at 25, 50 and 90% of the peak for log-processor (defaults and
            best) and the peer (tuned): produce -> searchable and produce -> committed percentiles
            (bench/freshness.py).
  crash     10 SIGKILLs (with restarts) during a run of each, on a second topic of as many
            records (--crash-records); then lost and duplicated records counted from the stores.
  shutdown  SIGTERM at random moments, --shutdown-rounds rounds (100) in each of five variants
            (bench/shutdown_bench.py): signal-to-exit percentiles, exit codes, dominant phase.
--phases picks phases; --merge keeps the others from the existing results file (phase_commits
then says which commit ran which phase).
Writes bench/results/latest.json and latest.md (top level: ratio_combined, ratio_peer), then
docs/batch-size.png and the README's generated Benchmarks part; runs labelled other than "full"
write latest-LABEL.json/.md and bench/work/batch-size.png only.
"""
import argparse
import concurrent.futures
import csv
import datetime
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse

import freshness
import shutdown_bench

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
WORK = os.path.join(ROOT, "bench", "work")
LP = os.path.join(ROOT, "target", "release", "log-processor")
PEER = os.path.join(WORK, "peer", "benthos-peer")
LOADER = os.path.join(ROOT, "target", "release", "examples", "ceiling_loader")
PEER_TMPL = os.path.join(ROOT, "bench", "peer", "config.yaml.tmpl")
PEER_DEFAULTS_TMPL = os.path.join(ROOT, "bench", "peer", "config-defaults.yaml.tmpl")
# The peer tuned for throughput: every setting and why in bench/peer/README.md.
PEER_TUNED = {"BATCH": 2000, "CHECKPOINT_LIMIT": 20000, "IN_FLIGHT": 8, "PG_CONNS": 8}
# log-processor at its best documented configuration (README, "Benchmarks": larger batches pay
# up to 5,000 records, at the cost of SIGTERM-to-exit time); everything else at its default.
LP_BEST = {"LP_BATCH_MAX_RECORDS": "5000"}
# --compare-base: another build of log-processor, run alternately with LP at LP_BEST;
# --after-env: settings added to LP's side only (a configuration change compared).
BASE_LP = None
AFTER_ENV = {}
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

DSN = os.environ.get("DATABASE_URL", "postgres://logproc:logproc@127.0.0.1:5432/logproc")
ES = os.environ.get("ELASTICSEARCH_URL", "http://127.0.0.1:9200").rstrip("/")
BROKERS = os.environ.get("KAFKA_BROKERS", "127.0.0.1:9092")
LP_HTTP = "127.0.0.1:19898"

TABLE_DDL = """
CREATE SCHEMA {s};
CREATE TABLE {s}.log_records (
    topic text NOT NULL, kafka_partition integer NOT NULL, kafka_offset bigint NOT NULL,
    ts timestamptz NOT NULL, level text, service text, message text, fields jsonb NOT NULL,
    kafka_key bytea, kafka_ts timestamptz, ingested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition, kafka_offset));
CREATE INDEX ON {s}.log_records (ts);
"""
# The mapping and settings log-processor puts in its index template (src/sink/elastic/template.rs),
# its refresh interval at the default LP_ES_REFRESH_MS: the peer and the ceilings write indices
# that refresh as often as log-processor's.
ES_TEMPLATE = {
    "priority": 100,
    "template": {
        "settings": {"index.mapping.total_fields.limit": 2000, "index.refresh_interval": "250ms"},
        "mappings": {"properties": {
            "@timestamp": {"type": "date"}, "level": {"type": "keyword"},
            "service": {"type": "keyword"}, "message": {"type": "text"},
            "fields": {"type": "object"},
            "kafka": {"properties": {"topic": {"type": "keyword"}, "partition": {"type": "integer"},
                                     "offset": {"type": "long"},
                                     "key": {"type": "keyword", "index": False}}}}},
    },
}


def log(*a):
    print(f"[{datetime.datetime.now():%H:%M:%S}]", *a, flush=True)


# ---------------------------------------------------------------- stores
def psql(sql, check=True):
    r = subprocess.run(["psql", DSN, "-v", "ON_ERROR_STOP=1", "-tAqc", sql],
                       capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"psql: {r.stderr.strip()} ({sql[:80]})")
    return r.stdout.strip()


def es(method, path, body=None, ctype="application/json", timeout=120):
    u = urllib.parse.urlparse(ES)
    c = http.client.HTTPConnection(u.hostname, u.port or 9200, timeout=timeout)
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    c.request(method, path, body=body, headers={"Content-Type": ctype} if body is not None else {})
    r = c.getresponse()
    data = r.read()
    c.close()
    try:
        return r.status, json.loads(data) if data else None
    except ValueError:
        return r.status, data


def pg_count(schema, query=psql):
    out = query(f"SELECT count(*) FROM {schema}.log_records", check=False)
    return int(out) if out.isdigit() else 0


class PgSession:
    """One psql session for the polls of a run. A psql process per poll (fork, exec, connect,
    a backend started) costs more CPU than the poll's query, on the machine being measured."""

    END = "__polled__"

    def __init__(self):
        self.p = subprocess.Popen(["psql", DSN, "-tAq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def __call__(self, sql, check=False):
        """The query's output; empty if it failed (a table not created yet)."""
        self.p.stdin.write(sql.rstrip(";") + f";\n\\echo {self.END}\n")
        self.p.stdin.flush()
        lines = []
        while (line := self.p.stdout.readline()) and line.strip() != self.END:
            lines.append(line.strip())
        return "\n".join(x for x in lines if x)

    def close(self):
        self.p.stdin.close()
        self.p.wait(10)


def pg_stored(schema, topic, n, partitions=6, query=psql):
    """Whether `schema` holds all n records of `topic`, cheaply while it does not. A count(*)
    scans the table: polled every 0.5 s over a growing million rows it cost PostgreSQL several
    CPU seconds per run, charged to the system measured. The sum over partitions of the highest
    offset stored plus one (index lookups on the primary key) is an upper bound of the rows
    stored; only once it reaches n does an exact count decide. Returns (done, estimate)."""
    est = query(f"SELECT coalesce(sum(m + 1), 0) FROM (SELECT (SELECT max(kafka_offset) FROM {schema}.log_records "
                f"WHERE topic = '{topic}' AND kafka_partition = p) AS m FROM generate_series(0, {partitions - 1}) AS p) AS x",
                check=False)
    est = int(est) if est.isdigit() else 0
    if est < n:
        return False, est
    exact = pg_count(schema, query)
    return exact >= n, exact


def es_count(prefix):
    st, b = es("GET", f"/{prefix}-*/_count")
    return b.get("count", 0) if st == 200 and isinstance(b, dict) else 0


def cleanup(schema=None, prefix=None, template=None):
    if schema:
        psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE", check=False)
    if prefix:
        es("DELETE", f"/{prefix}-*")
    if template:
        es("DELETE", f"/_index_template/{template}")


# ---------------------------------------------------------------- processes
# CPU accounting keeps the dead: a process's own utime+stime plus cutime+cstime, the CPU of the
# children it has reaped (PostgreSQL backends are reaped by the postmaster, so a connection that
# closed during a run still counts). Processes this script starts are reaped with wait4(), whose
# rusage covers the process and every descendant it reaped.
def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    comm = s[s.index("(") + 1:s.rindex(")")]
    return comm, s.rsplit(")", 1)[1].split()


def proc_cpu(pid):
    """utime+stime in seconds of a live process (all its threads)."""
    try:
        parts = _stat(pid)[1]
        return (int(parts[11]) + int(parts[12])) / CLK
    except (OSError, IndexError):
        return None


def thread_cpu(pid):
    """CPU seconds per thread name (threads with the same name summed)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                s = f.read()
            name = s[s.index("(") + 1:s.rindex(")")]
            parts = s.rsplit(")", 1)[1].split()
            name = re.sub(r"\d+$", "#", name)
            out[name] = round(out.get(name, 0) + (int(parts[11]) + int(parts[12])) / CLK, 2)
        except (OSError, ValueError):
            pass
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def service_pids():
    """The root process of each service of this checkout's tests/infra (not other checkouts')."""
    r = subprocess.run(["bash", os.path.join(ROOT, "tests/infra/infra.sh"), "status"],
                       capture_output=True, text=True)
    pids = {}
    for line in r.stdout.splitlines():
        m = re.match(r"(\w+): up \(pid (\d+)", line)
        if m:
            pids[{"postgres": "postgresql"}.get(m.group(1), m.group(1))] = int(m.group(2))
    missing = {"kafka", "postgresql", "opensearch"} - set(pids)
    if missing:
        raise RuntimeError(f"services not up: {sorted(missing)} ({r.stdout.strip()})")
    return pids


SERVICE_PIDS = {}


def tree_cpu(root):
    """CPU seconds of a process tree: every live member's own CPU plus its reaped children's."""
    children, cpu = {}, {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            parts = _stat(pid)[1]
        except (OSError, ValueError):
            continue
        children.setdefault(int(parts[1]), []).append(int(pid))
        cpu[int(pid)] = sum(int(x) for x in parts[11:15]) / CLK
    total, todo = 0.0, [root]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo += children.get(p, [])
    return total


def service_cpu():
    """CPU seconds so far of Kafka, OpenSearch and PostgreSQL (dead backends included)."""
    return {name: tree_cpu(pid) for name, pid in SERVICE_PIDS.items()}


def settle(quiet=0.05, timeout=30):
    """Waits until the services are idle (less than `quiet` CPU seconds in a second, all
    together), at most `timeout` s: a run must not pay for the work the last one left behind
    (its schema dropped, its indices deleted, flushes). Returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = service_cpu()
        time.sleep(1)
        if sum(diff(before, service_cpu()).values()) < quiet:
            break
    return round(time.monotonic() - t0, 1)


def hwm_kib(pid):
    """The process's own peak RSS so far (VmHWM), or 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reap(p, timeout):
    """Waits for a child started here (SIGKILL after `timeout` s). Returns exit code, CPU
    seconds of its whole life (reaped descendants included) and peak RSS in KiB.

    Peak RSS is the process's VmHWM, read every 20 ms until it exits (and by callers while it
    runs, see track_rss), never wait4's ru_maxrss: a child spawned with vfork carries this
    Python process's own high-water mark into ru_maxrss at exec, so every row showed the
    harness's size once it had grown."""
    deadline = time.monotonic() + timeout
    peak = RSS_SEEN.pop(p.pid, 0)
    while True:
        peak = max(peak, hwm_kib(p.pid))
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            break
        if time.monotonic() > deadline:
            p.kill()
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.02)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, ru.ru_utime + ru.ru_stime, peak


# Peak RSS (KiB) read so far per live child pid, by track_rss.
RSS_SEEN = {}


def track_rss(p):
    """Records the child's peak RSS so far; call it while polling, so reap() misses nothing."""
    RSS_SEEN[p.pid] = max(RSS_SEEN.get(p.pid, 0), hwm_kib(p.pid))


def run_measured(cmd, **kw):
    """Runs a command to completion; returns (stdout bytes, wall s, CPU s of it and its children)."""
    t = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, **kw)
    out = p.stdout.read()
    code, cpu, _ = reap(p, 3600)
    if code != 0:
        raise RuntimeError(f"{cmd[0]} exited {code}")
    return out, time.monotonic() - t, cpu


def diff(a, b):
    return {k: round(b[k] - a[k], 1) for k in a}


def metrics_text():
    try:
        host, port = LP_HTTP.split(":")
        c = http.client.HTTPConnection(host, int(port), timeout=5)
        c.request("GET", "/metrics")
        t = c.getresponse().read().decode()
        c.close()
        return t
    except OSError:
        return ""


def parse_histograms(text):
    """sum and count of the latency histograms, per name and labels."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(log_processor_\w+?)_(sum|count)(\{[^}]*\})? ([0-9.eE+-]+)$", line)
        if m:
            key = m.group(1) + (m.group(3) or "")
            out.setdefault(key, {})[m.group(2)] = float(m.group(4))
    res = {}
    for k, v in out.items():
        if "sum" in v and v.get("count"):
            res[k] = {"count": int(v["count"]), "sum_s": round(v["sum"], 2),
                      "mean_ms": round(1000 * v["sum"] / v["count"], 1)}
        elif "count" in v:
            res[k] = {"count": int(v["count"])}
    counters = {}
    for line in text.splitlines():
        m = re.match(r"^(log_processor_\w+_total)(\{[^}]*\})? ([0-9.eE+-]+)$", line)
        if m:
            counters[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return res, counters


def lp_env(ident, topic, extra=None):
    env = dict(os.environ)
    env.update({
        "LP_KAFKA_BROKERS": BROKERS, "LP_DATABASE_URL": DSN, "LP_ELASTICSEARCH_URL": ES,
        "LP_TOPICS": topic, "LP_GROUP_ID": ident, "LP_PG_SCHEMA": ident,
        "LP_ES_INDEX": ident.replace("_", "-") + "-%Y.%m.%d", "LP_HTTP_ADDR": LP_HTTP,
    })
    env.update(extra or {})
    return env


def lp_template_name(ident):
    return "log-processor-" + ident.replace("_", "-")


def peer_config(ident, topic, tuned=True, session_timeout=None):
    with open(PEER_TMPL if tuned else PEER_DEFAULTS_TMPL) as f:
        cfg = f.read()
    if session_timeout:
        # The kafka_franz input of this release has no session timeout setting (franz-go's
        # default is 45 s, so every SIGKILL would stall the group that long); the crash runs
        # use the sarama-based `kafka` input, same semantics (offsets marked after both acks).
        sarama = f"""input:
  kafka:
    addresses: [ "@BROKERS@" ]
    topics: [ "@TOPIC@" ]
    consumer_group: "@GROUP@"
    start_from_oldest: true
    checkpoint_limit: @CHECKPOINT_LIMIT@
    commit_period: 1s
    group:
      session_timeout: {session_timeout}
      heartbeat_interval: 1s
      rebalance_timeout: 10s
    batching:
      count: @BATCH@
      period: 200ms
"""
        cfg = re.sub(r"# input-begin\n.*?# input-end\n", sarama, cfg, flags=re.S)
    dsn = DSN + ("&" if "?" in DSN else "?") + "sslmode=disable"
    subst = {"@BROKERS@": BROKERS, "@TOPIC@": topic, "@GROUP@": ident, "@DSN@": dsn,
             "@TABLE@": f"{ident}.log_records", "@ES_URL@": ES,
             "@INDEX_PREFIX@": ident.replace("_", "-")}
    subst.update({f"@{k}@": str(v) for k, v in PEER_TUNED.items()})
    for k, v in subst.items():
        cfg = cfg.replace(k, v)
    path = os.path.join(WORK, f"{ident}.yaml")
    with open(path, "w") as f:
        f.write(cfg)
    return path


def peer_prepare(ident):
    psql(TABLE_DDL.format(s=ident))
    prefix = ident.replace("_", "-")
    body = dict(ES_TEMPLATE, index_patterns=[f"{prefix}-*"])
    st, b = es("PUT", f"/_index_template/bench-{prefix}", body)
    if st != 200:
        raise RuntimeError(f"template: {st} {b}")


def start(kind, ident, topic, logf, extra_env=None, session_timeout=None):
    """kind: lp (defaults), lp_best, lp_best_base (--compare-base's binary), peer (tuned) or
    peer_defaults."""
    if kind.startswith("lp"):
        env = dict(LP_BEST if kind.startswith("lp_best") else {}, **(extra_env or {}))
        if kind == "lp_best" and BASE_LP:
            env.update(AFTER_ENV)
        binary = BASE_LP if kind == "lp_best_base" else LP
        return subprocess.Popen([binary, "run"], env=lp_env(ident, topic, env),
                                stdout=logf, stderr=logf)
    cfg = peer_config(ident, topic, kind == "peer", session_timeout)
    return subprocess.Popen([PEER, "-c", cfg], stdout=logf, stderr=logf)


def prepare(kind, ident):
    if kind.startswith("peer"):
        peer_prepare(ident)


def template_of(kind, ident):
    return lp_template_name(ident) if kind.startswith("lp") else "bench-" + ident.replace("_", "-")


def per_million(x, n):
    return round(x * 1e6 / n, 1) if x is not None else None


def e2e_run(kind, ident, topic, n, extra_env=None, poll=(0.5, 0.1), timeout=1800, partitions=6):
    """Start, wait until both stores hold n records, snapshot, SIGTERM. Returns the figures:
    time, CPU of the process (its whole life, via wait4) and of each service during the run
    (until both stores held n records), peak RSS. Polled every poll[0] s, every poll[1] s once
    either store holds 90 % of the records: the end is found within poll[1] s at little cost."""
    prefix = ident.replace("_", "-")
    prepare(kind, ident)
    logf = open(os.path.join(WORK, f"{ident}.log"), "wb")
    query = PgSession()
    settled = settle()
    svc0 = service_cpu()
    t0 = time.monotonic()
    p = start(kind, ident, topic, logf, extra_env)
    pc = ec = 0
    samples = []
    while True:
        time.sleep(poll[1] if max(pc, ec) >= 0.9 * n else poll[0])
        track_rss(p)
        if p.poll() is not None:
            raise RuntimeError(f"{kind} exited early ({p.returncode}); see {logf.name}")
        if pc < n:
            done, pc = pg_stored(ident, topic, n, partitions, query)
            pc = pc if done else min(pc, n - 1)
        ec = es_count(prefix) if ec < n else ec
        samples.append((round(time.monotonic() - t0, 2), pc, ec))
        if pc >= n and ec >= n:
            break
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{kind} timed out at pg={pc} es={ec}")
    elapsed = time.monotonic() - t0
    svc = diff(svc0, service_cpu())
    query.close()
    res = {"kind": kind, "records": n, "seconds": round(elapsed, 2), "records_per_s": round(n / elapsed),
           "settled_s": settled,
           "cpu_s_at_done": proc_cpu(p.pid), "services_cpu_s": svc}
    first = next((s for s in samples if min(s[1], s[2]) > 0), None)
    if first:
        res["first_records_at_s"] = first[0]
        res["steady_records_per_s"] = round((n - min(first[1], first[2])) / max(elapsed - first[0], 0.01))
    if kind.startswith("lp"):
        res["threads_cpu_s"] = thread_cpu(p.pid)
        hist, counters = parse_histograms(metrics_text())
        res["metrics"] = hist
        res["counters"] = counters
    t1 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    res["exit_code"], cpu, rss_kib = reap(p, 60)
    res["sigterm_to_exit_ms"] = round(1000 * (time.monotonic() - t1))
    res["cpu_s"] = round(cpu, 2)
    res["peak_rss_mib"] = round(rss_kib / 1024, 1)
    res["cpu_s_per_million"] = per_million(cpu, n)
    res["services_cpu_s_per_million"] = {k: per_million(v, n) for k, v in svc.items()}
    # The whole job's CPU per record: the process until done plus every service in that time.
    res["total_cpu_s_per_million"] = per_million((res["cpu_s_at_done"] or 0) + sum(svc.values()), n)
    logf.close()
    return res


# ---------------------------------------------------------------- data preparation
def loadgen(topic, n, partitions=6, record_bytes=0, rate=0, start_seq=0):
    t = time.monotonic()
    subprocess.run([LP, "loadgen", "--kafka-brokers", BROKERS, "--topic", topic, "--count", str(n),
                    "--partitions", str(partitions), "--record-bytes", str(record_bytes),
                    "--rate", str(rate), "--start-seq", str(start_seq)],
                   check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return round(time.monotonic() - t, 1)


def end_offsets(topic, partitions):
    """Each partition's end offset (kcat's query mode, timestamp -1)."""
    args = ["kcat", "-Q", "-b", BROKERS]
    for p in range(partitions):
        args += ["-t", f"{topic}:{p}:-1"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    ends = {}
    for m in re.finditer(r"\[(\d+)\] offset (-?\d+)", out):
        ends[int(m.group(1))] = int(m.group(2))
    if len(ends) != partitions:
        raise RuntimeError(f"end offsets of {topic}: {out!r}")
    return ends


class FreshnessContext:
    """What bench/freshness.py needs of the harness."""
    work, brokers, dsn = WORK, BROKERS, DSN
    es = staticmethod(es)
    psql = staticmethod(psql)
    loadgen = staticmethod(loadgen)
    end_offsets = staticmethod(end_offsets)
    prepare = staticmethod(prepare)
    start = staticmethod(start)


def dump_topic(topic, n, path):
    """The topic's records as partition, offset, key, timestamp, payload lines (for the ceilings)."""
    with open(path, "wb") as f:
        subprocess.run(["kcat", "-C", "-b", BROKERS, "-t", topic, "-e", "-o", "beginning", "-q",
                        "-f", "%p\t%o\t%k\t%T\t%s\n"], stdout=f, check=True)
    lines = sum(1 for _ in open(path, "rb"))
    if lines != n:
        raise RuntimeError(f"dump has {lines} lines, expected {n}")


def head_dump(dump, k, path):
    """The first k lines of the dump (the sweep's subset)."""
    with open(dump, "rb") as fin, open(path, "wb") as fout:
        for i, line in enumerate(fin):
            if i >= k:
                break
            fout.write(line)
    return path


def ceiling_kafka(topic, n):
    svc0 = service_cpu()
    _, s, cpu = run_measured(["kcat", "-C", "-b", BROKERS, "-t", topic, "-e", "-o", "beginning", "-q"])
    svc = diff(svc0, service_cpu())
    return {"records": n, "seconds": round(s, 2), "records_per_s": round(n / s), "cpu_s": round(cpu, 2),
            "services_cpu_s": svc}


def ceiling_load(mode, ident, dump, topic, n, batch, conc):
    """The plain loader (examples/ceiling_loader.rs) writing the dump's records to PostgreSQL
    (`COPY`), OpenSearch (`_bulk`) or both at once; checks every record arrived."""
    prefix = ident.replace("_", "-")
    if mode != "es":
        psql(TABLE_DDL.format(s=ident))
    if mode != "pg":
        body = dict(ES_TEMPLATE, index_patterns=[f"{prefix}-*"])
        st, b = es("PUT", f"/_index_template/bench-{prefix}", body)
        if st != 200:
            raise RuntimeError(f"template: {st} {b}")
    try:
        settled = settle()
        svc0 = service_cpu()
        out, wall, cpu = run_measured(
            [LOADER, "--dump", dump, "--topic", topic, "--mode", mode, "--batch", str(batch),
             "--concurrency", str(conc), "--table", f"{ident}.log_records", "--index-prefix", prefix,
             "--database-url", DSN, "--elasticsearch-url", ES])
        svc = diff(svc0, service_cpu())
        r = json.loads(out.decode().strip().splitlines()[-1])
        if mode != "es" and pg_count(ident) != n:
            raise RuntimeError(f"loader: {pg_count(ident)} rows of {n}")
        if mode != "pg":
            es("POST", f"/{prefix}-*/_refresh")
            if es_count(prefix) != n:
                raise RuntimeError(f"loader: {es_count(prefix)} documents of {n}")
    finally:
        cleanup(ident if mode != "es" else None, prefix if mode != "pg" else None,
                f"bench-{prefix}" if mode != "pg" else None)
    r.update({"mode": mode, "services_cpu_s": svc, "settled_s": settled,
              "loader_cpu_s": r.get("loader_cpu_s"), "loader_process_cpu_s": round(cpu, 2)})
    # Share of one core the loader used while loading: far below 1 means it waited on the stores.
    r["loader_core_share"] = round(r["loader_cpu_s"] / r["seconds"], 2) if r.get("loader_cpu_s") is not None else None
    total = (r.get("loader_cpu_s") or 0) + sum(svc.values())
    r["total_cpu_s_per_million"] = per_million(total, n)
    r["services_cpu_s_per_million"] = {k: per_million(v, n) for k, v in svc.items()}
    return r


CEILING_GRID = {"pg": [(1000, 1), (1000, 2), (5000, 2), (5000, 4)],
                "es": [(1000, 2), (1000, 4), (5000, 4), (5000, 8)],
                "both": [(1000, 2), (1000, 4), (5000, 2), (5000, 4), (5000, 8)]}


# ---------------------------------------------------------------- batch-size sweep
def batch_run(ident, topic, batch, k):
    """Throughput until k records are in both stores, then SIGTERM under load (backlog left)."""
    prefix = ident.replace("_", "-")
    logf = open(os.path.join(WORK, f"{ident}.log"), "wb")
    t0 = time.monotonic()
    p = start("lp", ident, topic, logf, {"LP_BATCH_MAX_RECORDS": str(batch)})
    svc0 = service_cpu()
    first = None
    while True:
        time.sleep(0.25)
        track_rss(p)
        if p.poll() is not None:
            raise RuntimeError(f"lp exited early; see {logf.name}")
        c = min(pg_stored(ident, topic, k)[1], es_count(prefix))
        now = time.monotonic() - t0
        if first is None and c > 0:
            first = (now, c)
        if c >= k:
            break
        if now > 900:
            raise RuntimeError("batch run timed out")
    cpu = proc_cpu(p.pid)
    svc = diff(svc0, service_cpu())
    t1 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    code, _, rss_kib = reap(p, 60)
    stop_ms = round(1000 * (time.monotonic() - t1))
    logf.close()
    rate = (c - first[1]) / max(now - first[0], 0.01)
    return {"batch_max_records": batch, "records_measured": k, "steady_records_per_s": round(rate),
            "cpu_s_per_million": round(cpu * 1e6 / c, 1), "sigterm_to_exit_ms": stop_ms,
            "services_cpu_s_per_million": {a: per_million(b, c) for a, b in svc.items()},
            "peak_rss_mib": round(rss_kib / 1024, 1), "exit_code": code}


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = [r["batch_max_records"] for r in rows]
    fig, ax1 = plt.subplots(figsize=(7, 4.2))
    ax1.plot(xs, [r["steady_records_per_s"] for r in rows], "o-", color="tab:blue", label="throughput")
    ax1.set_xscale("log")
    ax1.set_xlabel("LP_BATCH_MAX_RECORDS")
    ax1.set_ylabel("records/s (both stores)", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(xs, [r["sigterm_to_exit_ms"] for r in rows], "s--", color="tab:red", label="SIGTERM to exit")
    ax2.set_ylabel("SIGTERM to exit under load (ms)", color="tab:red")
    ax1.set_title("log-processor batch size: throughput vs shutdown time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------- crash runs
def stored_keys(ident):
    pg = {}
    r = subprocess.run(["psql", DSN, "-tAqc",
                        f"COPY (SELECT kafka_partition, kafka_offset FROM {ident}.log_records) TO STDOUT"],
                       capture_output=True, text=True, check=True)
    for line in r.stdout.splitlines():
        a, b = line.split("\t")
        k = (int(a), int(b))
        pg[k] = pg.get(k, 0) + 1
    prefix = ident.replace("_", "-")
    es("POST", f"/{prefix}-*/_refresh")
    docs = {}
    st, b = es("POST", f"/{prefix}-*/_search?scroll=2m",
               {"size": 10000, "_source": ["kafka.partition", "kafka.offset"], "sort": ["_doc"]})
    while st == 200 and b["hits"]["hits"]:
        for h in b["hits"]["hits"]:
            k = (h["_source"]["kafka"]["partition"], h["_source"]["kafka"]["offset"])
            docs[k] = docs.get(k, 0) + 1
        st, b = es("POST", "/_search/scroll", {"scroll": "2m", "scroll_id": b["_scroll_id"]})
    return pg, docs


def crash_run(kind, ident, topic, n, expected, kills=10, rng=None):
    """n records on `topic`; SIGKILL `kills` times (each after fresh progress), restart at once,
    then wait until both stores stop growing or hold n; count lost and duplicated keys."""
    rng = rng or random.Random(7)
    prefix = ident.replace("_", "-")
    extra = {"LP_SESSION_TIMEOUT_MS": "6000", "LP_REVOKE_DRAIN_TIMEOUT_MS": "3000"}
    prepare(kind, ident)
    logf = open(os.path.join(WORK, f"{ident}.log"), "wb")
    t0 = time.monotonic()
    p = start(kind, ident, topic, logf, extra, session_timeout="6s")
    kill_at = []
    done = 0
    for i in range(kills):
        base = pg_count(ident)
        target = base + rng.randint(max(1, n // 60), max(2, n // 25))
        while pg_count(ident) < min(target, n - 1):
            time.sleep(0.1)
            if time.monotonic() - t0 > 1200:
                break
        time.sleep(rng.uniform(0, 0.3))
        p.kill()
        reap(p, 60)
        kill_at.append(pg_count(ident))
        p = start(kind, ident, topic, logf, extra, session_timeout="6s")
    last, still = -1, 0
    while True:
        time.sleep(1)
        pc, ec = pg_count(ident), es_count(prefix)
        if pc >= n and ec >= n:
            break
        still = still + 1 if pc + ec == last else 0
        last = pc + ec
        if still >= 30 or time.monotonic() - t0 > 1800:
            break
    secs = time.monotonic() - t0
    p.send_signal(signal.SIGTERM)
    reap(p, 60)
    logf.close()
    pg, docs = stored_keys(ident)
    lost_both = sum(1 for k in expected if k not in pg and k not in docs)
    return {"records": n, "kills": len(kill_at), "rows_at_kills": kill_at, "seconds": round(secs, 1),
            "pg_rows": sum(pg.values()), "es_docs": sum(docs.values()),
            "lost_in_neither_store": lost_both,
            "missing_pg": sum(1 for k in expected if k not in pg),
            "missing_es": sum(1 for k in expected if k not in docs),
            "duplicates_pg": sum(v - 1 for v in pg.values()),
            "duplicates_es": sum(v - 1 for v in docs.values()),
            "unexpected_keys": sum(1 for k in set(pg) | set(docs) if k not in expected)}


def expected_keys(dump):
    ks = set()
    with open(dump, "rb") as f:
        for line in f:
            a, b, _ = line.split(b"\t", 2)
            ks.add((int(a), int(b)))
    return ks


# ---------------------------------------------------------------- report
def versions():
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            return None
    _, info = es("GET", "/")
    v = {
        "log_processor": out([LP, "--version"]),
        "peer": "Benthos " + (out([PEER, "--version"]) or "").splitlines()[0].split()[-1] if os.path.exists(PEER) else None,
        "postgresql": psql("SHOW server_version", check=False),
        "opensearch": info.get("version", {}).get("number") if isinstance(info, dict) else None,
        "kafka": out(["bash", os.path.join(ROOT, "tests/infra/infra.sh"), "status"]),
        "kcat": " ".join((out(["kcat", "-V"]) or "").splitlines()[:2]) if shutil.which("kcat") else None,
        "go": out(["go", "version"]), "rustc": out(["rustc", "--version"]),
        "python": platform.python_version(), "kernel": platform.release(),
    }
    m = re.search(r"kafka: up \([^)]*version ([0-9.]+)\)", v["kafka"] or "")
    v["kafka"] = m.group(1) if m else v["kafka"]
    return v


def machine():
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1])
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cores": os.cpu_count(), "memory_gib": round(mem / 1024 / 1024, 1), "cpu": model}


def med(xs):
    return round(statistics.median(xs), 2) if xs else None


E2E = (("log_processor_best", "lp_best", "log-processor, best configuration"),
       ("log_processor_defaults", "lp", "log-processor, defaults"),
       ("peer_tuned", "peer", "peer, tuned"),
       ("peer_defaults", "peer_defaults", "peer, defaults"))


def e2e_summary(runs, cores):
    if not runs:
        return None
    n = runs[0]["records"]
    s = {"records": n, "median_s": med([r["seconds"] for r in runs]),
         "cpu_s_per_million": med([r["cpu_s_per_million"] for r in runs]),
         "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
         "services_cpu_s_per_million": {k: med([r["services_cpu_s_per_million"][k] for r in runs])
                                        for k in runs[0]["services_cpu_s_per_million"]},
         "total_cpu_s_per_million": med([r["total_cpu_s_per_million"] for r in runs])}
    s["records_per_s"] = round(n / s["median_s"])
    # What the machine's cores could do at this CPU cost per record, were nothing else running.
    s["cpu_bound_records_per_s"] = round(cores * 1e6 / s["total_cpu_s_per_million"]) if s["total_cpu_s_per_million"] else None
    return s


def ceiling_summary(runs, cores):
    if not runs:
        return None
    s = {"batch": runs[0].get("batch"), "concurrency": runs[0].get("concurrency"),
         "records": runs[0]["records"], "median_s": med([r["seconds"] for r in runs])}
    s["records_per_s"] = round(s["records"] / s["median_s"])
    if "total_cpu_s_per_million" in runs[0]:
        s["total_cpu_s_per_million"] = med([r["total_cpu_s_per_million"] for r in runs])
        s["services_cpu_s_per_million"] = {k: med([r["services_cpu_s_per_million"][k] for r in runs])
                                           for k in runs[0]["services_cpu_s_per_million"]}
        s["loader_core_share"] = med([r["loader_core_share"] for r in runs])
        s["cpu_bound_records_per_s"] = round(cores * 1e6 / s["total_cpu_s_per_million"]) if s["total_cpu_s_per_million"] else None
    return s


def ratio(a, b):
    return round(a / b, 2) if a and b else None


def paired_lp_run(ident, topic, n):
    """log-processor at its best configuration, run next to a combined-ceiling run."""
    try:
        return e2e_run("lp_best", ident, topic, n)
    finally:
        cleanup(ident, ident.replace("_", "-"), template_of("lp_best", ident))


def paired_summary(res, cores):
    """log-processor best against the combined ceiling over the runs made in pairs."""
    lp, comb = res.get("paired_lp_best") or [], (res.get("ceilings") or {}).get("combined") or []
    pairs = list(zip(lp, comb))
    if not pairs:
        return None
    lp_s, comb_s = e2e_summary(lp, cores), ceiling_summary(comb, cores)
    return {"log_processor_best": lp_s, "combined": comb_s,
            "pair_ratios": [ratio(a["records_per_s"], b["records_per_s"]) for a, b in pairs],
            "ratio_combined": ratio(lp_s["records_per_s"], comb_s["records_per_s"])}


def summarize(res):
    cores = res["machine"]["cores"]
    s = {key: e2e_summary(res["e2e"].get(key, []), cores) for key, _, _ in E2E}
    c = {name: ceiling_summary(runs, cores) for name, runs in res.get("ceilings", {}).items()}
    s["ceilings"] = c
    rps = lambda x: (x or {}).get("records_per_s")
    cpm = lambda x: (x or {}).get("cpu_s_per_million")
    comb = c.get("combined")
    s["paired"] = paired_summary(res, cores)
    s["ratio_combined"] = combined_ratio(s)
    s["ratio_combined_defaults"] = ratio(rps(s["log_processor_defaults"]), rps(comb))
    s["ratio_peer_defaults"] = ratio(rps(s["log_processor_defaults"]), rps(s["peer_defaults"]))
    s["cpu_per_record_vs_peer"] = ratio(cpm(s["log_processor_best"]), cpm(s["peer_tuned"]))
    lp_d = s["log_processor_defaults"] or {}
    s["targets"] = [
        {"target": "end to end >= 0.85 of the combined ceiling (best configuration, paired runs)",
         "value": s["ratio_combined"], "goal": 0.85, "higher_is_better": True},
        {"target": "end to end >= 0.7 of the combined ceiling (defaults)",
         "value": s["ratio_combined_defaults"], "goal": 0.7, "higher_is_better": True},
        {"target": ">= 2.5x the tuned peer's records/s",
         "value": ratio(rps(s["log_processor_best"]), rps(s["peer_tuned"])), "goal": 2.5, "higher_is_better": True},
        {"target": "<= 1/5 of the tuned peer's CPU per record",
         "value": s["cpu_per_record_vs_peer"], "goal": 0.2, "higher_is_better": False},
        {"target": "peak RSS <= 128 MiB on the full backlog at defaults",
         "value": lp_d.get("peak_rss_mib") if lp_d.get("records") == res["records"] else None,
         "goal": 128, "higher_is_better": False},
    ]
    m = res.get("mapping") or {}
    if m.get("plain") and m.get("typed"):
        med_of = lambda runs, k: statistics.median(r[k] for r in runs)
        s["mapping"] = {key: {"median_records_per_s": round(med_of(m[key], "records_per_s")),
                              "median_cpu_s_per_million": med_of(m[key], "cpu_s_per_million"),
                              "max_peak_rss_mib": max(r["peak_rss_mib"] for r in m[key])}
                        for key in ("plain", "typed")}
        s["mapping"]["ratio_typed"] = ratio(s["mapping"]["typed"]["median_records_per_s"],
                                            s["mapping"]["plain"]["median_records_per_s"])
    for t in s["targets"]:
        v = t["value"]
        t["met"] = None if v is None else (v >= t["goal"] if t["higher_is_better"] else v <= t["goal"])
    return s


def combined_ratio(s):
    """ratio_combined: over the paired runs when there are some (results before them: the e2e
    phase's runs against the ceilings phase's)."""
    if s.get("paired"):
        return s["paired"]["ratio_combined"]
    comb = (s.get("ceilings") or {}).get("combined") or {}
    return ratio((s.get("log_processor_best") or {}).get("records_per_s"), comb.get("records_per_s"))


def rates(runs):
    return ", ".join(f"{int(r['records_per_s']):,}" for r in runs)


def fmt(x):
    if x is None:
        return "-"
    return f"{x:,}" if isinstance(x, int) else str(x)


def markdown(res):
    s = res["summary"]
    n = res["records"]
    v = res["versions"]
    L = [f"# Benchmark results ({res['label']})", "",
         f"{res['machine']['cores']} cores, {res['machine']['memory_gib']} GiB ({res['machine']['cpu']}); "
         f"commit `{res['git_commit'][:12]}`{' (tree not clean)' if res['git_dirty'] else ''}"
         f"{', every phase' if res.get('single_commit', True) else ' (phases from several commits: see phase_commits)'}; "
         f"{n:,} records (~{res['record_bytes_avg']} B JSON), 6 partitions; "
         f"{res['runs']} alternating runs of each tuned configuration; {fmt(v.get('log_processor'))}, "
         f"{fmt(v.get('peer'))}, PostgreSQL {fmt(v.get('postgresql'))}, OpenSearch {fmt(v.get('opensearch'))}, "
         f"Kafka {fmt(v.get('kafka'))}, all on the same machine.", "",
         f"**ratio_combined = {fmt(res.get('ratio_combined'))}** (log-processor at its best configuration / "
         f"combined ceiling, paired runs), **ratio_peer = {fmt(res.get('ratio_peer'))}** (log-processor best / tuned peer, records/s).", "",
         "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for t in s["targets"]:
        L.append(f"| {t['target']} | {fmt(t['value'])} | {'-' if t['met'] is None else ('yes' if t['met'] else 'no')} |")
    best, comb = s.get("log_processor_best"), (s.get("ceilings") or {}).get("combined")
    if best and comb and comb.get("total_cpu_s_per_million"):
        stores = round(sum(best["services_cpu_s_per_million"].values()), 1)
        L += ["", f"Where the CPU goes: at the best configuration a record costs {best['total_cpu_s_per_million']} CPU s per 1M "
              f"end to end, {best['cpu_s_per_million']} of them in log-processor and {stores} in Kafka, PostgreSQL and OpenSearch. "
              f"Writing the same records with no Kafka and no daemon (combined ceiling) costs the stores "
              f"{comb['total_cpu_s_per_million']} CPU s per 1M, so on {res['machine']['cores']} cores no pipeline that writes "
              f"both stores exceeds about {fmt(comb['cpu_bound_records_per_s'])} records/s; log-processor's own share bounds "
              f"what any change to it can gain."]
    L += ["", "## End to end (until PostgreSQL and OpenSearch both hold every record)", "",
          "CPU s per 1M records: the process (its whole life, exited children included) and each "
          "service during the run (PostgreSQL's exited backends included); \"cores' limit\" is "
          "cores x 1M / (all CPU per 1M records): the rate this CPU cost allows with nothing else running.", "",
          "| | records | median s | records/s | runs (s) | CPU s / 1M: process | PostgreSQL | OpenSearch | Kafka | all | cores' limit rec/s | peak RSS MiB |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, _, name in E2E:
        x = s.get(key)
        if not x:
            continue
        sv = x["services_cpu_s_per_million"]
        L.append(f"| {name} | {x['records']:,} | {x['median_s']} | {x['records_per_s']:,} | "
                 f"{', '.join(str(r['seconds']) for r in res['e2e'][key])} | {x['cpu_s_per_million']} | "
                 f"{sv.get('postgresql')} | {sv.get('opensearch')} | {sv.get('kafka')} | {x['total_cpu_s_per_million']} | "
                 f"{fmt(x['cpu_bound_records_per_s'])} | {x['peak_rss_mib']} |")
    L += ["", f"Settings: {res['settings']['log_processor_best']}; {res['settings']['log_processor_defaults']}; "
          f"{res['settings']['peer_tuned']}; {res['settings']['peer_defaults']}."]
    c = s.get("ceilings") or {}
    if c:
        L += ["", "## Ceilings (the same records, no Kafka consumer and no daemon)", "",
              "Best point of each sweep, re-run on every record. Loader core share: the loader's CPU "
              "seconds over its wall seconds (far below 1: it waits on the stores, it is not the bottleneck).", "",
              "| path | bulk | concurrency | median s | records/s | CPU s / 1M: PostgreSQL | OpenSearch | all | cores' limit rec/s | loader core share |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for name, x in c.items():
            if not x:
                continue
            sv = x.get("services_cpu_s_per_million", {})
            L.append(f"| {res['ceiling_desc'][name]} | {fmt(x['batch'])} | {fmt(x['concurrency'])} | {x['median_s']} | "
                     f"{x['records_per_s']:,} | {fmt(sv.get('postgresql'))} | {fmt(sv.get('opensearch'))} | "
                     f"{fmt(x.get('total_cpu_s_per_million'))} | {fmt(x.get('cpu_bound_records_per_s'))} | {fmt(x.get('loader_core_share'))} |")
        pr = s.get("paired")
        if pr:
            L += ["", f"Paired runs (ratio_combined): each combined-ceiling run next to a run of log-processor at its "
                  f"best configuration, alternating which goes first. log-processor "
                  f"{rates(res['paired_lp_best'])} records/s against the ceiling's "
                  f"{rates(res['ceilings']['combined'])}: per pair "
                  f"{', '.join(fmt(x) for x in pr['pair_ratios'])}; medians {pr['log_processor_best']['records_per_s']:,} / "
                  f"{pr['combined']['records_per_s']:,} = **{fmt(pr['ratio_combined'])}**."]
        if res.get("ceiling_sweeps"):
            L += ["", f"Sweeps ({res['sweep_records']:,} records each point):", "",
                  "| store | bulk | concurrency | records/s | loader core share |", "|---|---|---|---|---|"]
            for mode, pts in res["ceiling_sweeps"].items():
                for r in pts:
                    L.append(f"| {mode} | {r['batch']} | {r['concurrency']} | {fmt(int(r['records_per_s']))} | {r['loader_core_share']} |")
    if res.get("growth"):
        L += ["", "## Growth (log-processor at defaults)", "",
              "| partitions | record bytes | records | records/s | MiB/s | CPU s / 1M | all CPU s / 1M | peak RSS MiB |",
              "|---|---|---|---|---|---|---|---|"]
        for r in res["growth"]:
            L.append(f"| {r['partitions']} | {r['record_bytes']} | {r['records']:,} | {r['records_per_s']:,} | "
                     f"{r['mib_per_s']} | {r['cpu_s_per_million']} | {r['total_cpu_s_per_million']} | {r['peak_rss_mib']} |")
    if res.get("partitions"):
        L += ["", "## Partitions (best configuration, one or two batches at a time per worker)", "",
              "LP_WORKER_IN_FLIGHT=1 writes one batch at a time per worker (the behaviour before "
              "in-partition pipelining); 2 (the default) sends a partition's next batch to the search "
              "store while the one before it commits. Share: of the 6-partition figure at the same setting.", "",
              "| partitions | LP_WORKER_IN_FLIGHT | records | records/s | share of 6 partitions | CPU s / 1M | peak RSS MiB |",
              "|---|---|---|---|---|---|---|"]
        for r in res["partitions"]:
            L.append(f"| {r['partitions']} | {r['worker_in_flight']} | {r['records']:,} | {r['records_per_s']:,} | "
                     f"{r.get('share_of_6', '')} | {r['cpu_s_per_million']} | {r['peak_rss_mib']} |")
    if s.get("mapping"):
        mp = s["mapping"]
        L += ["", "## Typed columns (LP_MAPPING_FILE)", "",
              f"The best configuration with and without `{res['mapping']['file']}` (five fields of every record "
              f"typed in `log_records`, one indexed), {len(res['mapping']['plain'])} alternating runs each: "
              f"**ratio_typed = {fmt(mp['ratio_typed'])}** (records/s typed / today's shape).", "",
              "| | median records/s | runs (records/s) | median CPU s / 1M (process) | peak RSS MiB |", "|---|---|---|---|---|"]
        for key, name in (("plain", "today's shape"), ("typed", "five typed columns")):
            L.append(f"| {name} | {mp[key]['median_records_per_s']:,} | "
                     f"{', '.join(str(r['records_per_s']) for r in res['mapping'][key])} | "
                     f"{mp[key]['median_cpu_s_per_million']} | {mp[key]['max_peak_rss_mib']} |")
    fr = res.get("freshness") or {}
    if fr.get("rows"):
        L += ["", "## Freshness (produce -> searchable, produce -> committed)", "",
              f"A steady produce rate at shares of {fr['peak']:,} records/s ({fr['peak_source']}), "
              f"{fr['seconds']} s each, on a fresh 6-partition topic after 600 warm-up records; each "
              f"record's latency from its Kafka CreateTime to the answer of the first probe query (every "
              f"{fr['poll_s']} s, each store's stamped on its own) that saw it searchable in OpenSearch / committed in PostgreSQL (bench/freshness.py).", "",
              freshness.markdown(fr["rows"])]
    if res.get("batch_sizes"):
        L += ["", "## Batch size (LP_BATCH_MAX_RECORDS)", "",
              "| batch | records measured | steady records/s | CPU s / 1M | SIGTERM to exit under load (ms) | exit |",
              "|---|---|---|---|---|---|"]
        for r in res["batch_sizes"]:
            L.append(f"| {r['batch_max_records']} | {r['records_measured']:,} | {r['steady_records_per_s']:,} | "
                     f"{r['cpu_s_per_million']} | {r['sigterm_to_exit_ms']} | {r['exit_code']} |")
        L += ["", "Plot: `docs/batch-size.png`." if res["label"] == "full" else "Plot: `bench/work/batch-size.png`."]
    if res.get("crash"):
        L += ["", "## Crash cost (SIGKILL and restart)", "",
              "| | records | kills | seconds | PG rows | OS docs | lost (in neither) | missing PG | missing OS | duplicates PG | duplicates OS |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, r in res["crash"].items():
            L.append(f"| {key} | {r['records']:,} | {r['kills']} | {r['seconds']} | {r['pg_rows']:,} | {r['es_docs']:,} | "
                     f"{r['lost_in_neither_store']} | {r['missing_pg']} | {r['missing_es']} | {r['duplicates_pg']} | {r['duplicates_es']} |")
    if res.get("shutdown"):
        L += ["", "## Shutdown (SIGTERM at random moments, log-processor at defaults)", "",
              shutdown_bench.markdown(res["shutdown"]).rstrip()]
    if res.get("notes"):
        L += ["", "## Notes", ""] + [f"* {x}" for x in res["notes"]]
    return "\n".join(L) + "\n"


def git(*args):
    return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True).stdout.strip()


# Files the benchmark itself writes; a change to them during the run is not a change to the code.
OUTPUTS = ("bench/results/", "docs/batch-size.png", "README.md")


def code_state():
    # Not through git(): its strip() would eat the leading space of the first " M path" line.
    out = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=all"],
                         capture_output=True, text=True).stdout
    # The benchmark's own outputs (an earlier run's results) are not a change to the code.
    dirty = [l for l in out.splitlines() if l.strip() and not any(l[3:].startswith(o) for o in OUTPUTS)]
    return git("rev-parse", "HEAD"), dirty


def readme_update(md):
    """Puts latest.md (headings one level down) between the README's bench markers."""
    path = os.path.join(ROOT, "README.md")
    with open(path) as f:
        text = f.read()
    begin, end = "<!-- bench:begin (generated by bench/bench.py from bench/results/latest.md) -->", "<!-- bench:end -->"
    if begin not in text or end not in text:
        raise RuntimeError("README.md has no bench markers")
    body = "\n".join(("#" + l if l.startswith("#") else l) for l in md.splitlines()[1:]).strip()
    head, rest = text.split(begin, 1)
    text = head + begin + "\n" + body + "\n" + end + rest.split(end, 1)[1]
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--records", type=int)
    ap.add_argument("--runs", type=int, help="runs of log-processor best and the tuned peer")
    ap.add_argument("--default-runs", type=int, default=1, help="runs of each at defaults")
    ap.add_argument("--peer-default-records", type=int, help="records the peer at defaults moves (default: records/100)")
    ap.add_argument("--sweep-records", type=int, help="records per ceiling sweep point (default: min(records, 200000))")
    ap.add_argument("--growth-records", type=int, help="records per growth point (default 100000, fewer for big records)")
    ap.add_argument("--phases", default="e2e,ceilings,batch,growth,partitions,mapping,freshness,crash,shutdown")
    ap.add_argument("--freshness-peak", type=int, help="records/s the freshness rates are shares of "
                    "(default: log-processor's best median of this run's e2e phase, else of bench/results/latest.json)")
    ap.add_argument("--freshness-seconds", type=int, default=20, help="seconds each freshness run produces")
    ap.add_argument("--shutdown-rounds", type=int, help="SIGTERM rounds per shutdown variant (default 100, smoke 3)")
    ap.add_argument("--crash-records", type=int)
    ap.add_argument("--batch-records", type=int)
    ap.add_argument("--label")
    ap.add_argument("--lp-binary", help="log-processor binary to measure (default target/release/log-processor), "
                    "e.g. a build of another commit for a before/after comparison of one phase")
    ap.add_argument("--compare-base", help="a before/after comparison of one change: the e2e phase runs only "
                    "this binary and --lp-binary at the best configuration, alternating, --runs times each")
    ap.add_argument("--after-env", action="append", default=[], metavar="K=V",
                    help="with --compare-base: a setting for --lp-binary's runs only")
    ap.add_argument("--merge", action="store_true",
                    help="keep the phases not run from the existing results file (their commit is recorded)")
    a = ap.parse_args()
    n = a.records or (20_000 if a.smoke else 1_000_000)
    runs = a.runs or (1 if a.smoke else 3)
    crash_n = a.crash_records or n
    batch_k = a.batch_records or (20_000 if a.smoke else 200_000)  # /25 for size 1, /5 for size 10
    sweep_n = a.sweep_records or min(n, 200_000)
    growth_n = a.growth_records or (10_000 if a.smoke else 100_000)
    peer_default_n = a.peer_default_records or max(1, n // 100)
    phases = a.phases.split(",")
    if a.lp_binary:
        global LP
        LP = os.path.abspath(a.lp_binary)
    os.makedirs(WORK, exist_ok=True)
    SERVICE_PIDS.update(service_pids())
    stamp = datetime.datetime.now().strftime("%m%d%H%M%S")
    topic = f"bench_{stamp}"
    if a.compare_base:
        global BASE_LP
        BASE_LP = os.path.abspath(a.compare_base)
        for kv in a.after_env:
            if "=" not in kv:
                ap.error(f"--after-env {kv!r}: expected NAME=VALUE")
            AFTER_ENV.update([kv.split("=", 1)])
    elif a.after_env:
        ap.error("--after-env needs --compare-base")
    label = a.label or ("compare" if a.compare_base else "smoke" if a.smoke else ("full" if n == 1_000_000 and runs >= 3 else "reduced"))
    commit, dirty = code_state()
    res = {"label": label,
           "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "versions": versions(),
           "git_commit": commit, "git_dirty": bool(dirty), "git_status": dirty,
           "lp_binary": os.path.relpath(LP, ROOT),
           "phase_commits": {},
           "records": n, "runs": runs, "default_runs": a.default_runs, "topic": topic, "partitions": 6,
           "sweep_records": sweep_n,
           "settings": {"log_processor_best": "log-processor best: " + ", ".join(f"{k}={v}" for k, v in LP_BEST.items()) + ", the rest at defaults",
                        "log_processor_defaults": "log-processor defaults (LP_BATCH_MAX_RECORDS=1000, LP_BATCH_LINGER_MS=100, LP_ES_REFRESH_MS=250, LP_WORKERS=4, LP_WORKER_QUEUE=2, LP_MEMORY_BUDGET_MB=128)",
                        "peer_tuned": "peer tuned (bench/peer/config.yaml.tmpl): " + ", ".join(f"{k}={v}" for k, v in PEER_TUNED.items()),
                        "peer_defaults": f"peer at defaults (bench/peer/config-defaults.yaml.tmpl, {peer_default_n:,} records)"},
           "e2e": {key: [] for key, _, _ in E2E}, "ceilings": {}, "ceiling_sweeps": {}, "batch_sizes": [],
           "growth": [], "partitions": [], "mapping": {}, "freshness": {}, "crash": {}, "shutdown": {},
           "ceiling_desc": {"kafka_consume": "Kafka: kcat -C -e to /dev/null",
                            "pg": "PostgreSQL: COPY into a log_records-like table (PK + ts index)",
                            "es": "OpenSearch: _bulk of the same documents",
                            "combined": "Both at once: each chunk COPYed and bulk-indexed concurrently"},
           "notes": [
               "Peer: Benthos v4.27.0 (github.com/benthosdev/benthos/v4, the code base Redpanda Connect continues) built from bench/peer; the Go module proxy here refuses the github.com/redpanda-data/connect/v4 sources (403 on the module zip) and this machine's package list marks that module not to use (licence); github.com/redpanda-data/benthos/v4 is served but is only the engine, without the Kafka, SQL and OpenSearch components.",
               "Peer crash runs use the sarama `kafka` input with a 6 s session timeout instead of kafka_franz (no session timeout setting in this release; 45 s franz-go default would stall each restart); log-processor crash runs use LP_SESSION_TIMEOUT_MS=6000.",
               "End-to-end time runs from process start (includes the group join) until counts in PostgreSQL (count(*)) and OpenSearch (_count; every index refreshes every 250 ms, LP_ES_REFRESH_MS and the bench template alike) both reach the record count, polled every 0.5 s and every 0.1 s once either holds 90 % of the records.",
               "Every end-to-end and ceiling run starts once the services have been idle for a second (settled_s: the wait, at most 30 s), so no run pays for the cleanup of the one before.",
               "Peak RSS: the process's own high-water mark (VmHWM in /proc/PID/status), read while it runs and until it exits. Not wait4's ru_maxrss: a child spawned with vfork reports there the harness's own peak, carried over at exec.",
               "CPU: processes started by the benchmark are reaped with wait4(), whose rusage covers them and every child they reaped; the services' CPU is that of their process trees (tests/infra's pids) with each live process's cutime+cstime, so PostgreSQL backends that exited during a run count.",
               "Ceilings: examples/ceiling_loader.rs encodes every row and document before its clock starts, then COPYs and/or _bulk-indexes chunks with N in flight; each store's sweep picks the best point, re-run on every record.",
               "Before any phase, the loader writes 100,000 records (or all, if fewer) to both stores twice, unmeasured: fresh JVMs spend their first minutes compiling hot paths.",
               "Batch sweep: steady-state rate between the first stored records and the measured count; then SIGTERM with the rest of the topic still unread (under load). Fewer records for sizes 1 and 10 (see records_measured).",
               "Duplicates are counted as rows/documents beyond one per (partition, offset); both systems key rows (primary key) and documents (_id) by topic-partition-offset, so replays after a kill overwrite or skip.",
           ]}
    out_dir = os.path.join(ROOT, "bench", "results")
    os.makedirs(out_dir, exist_ok=True)
    suffix = {"full": "", "smoke": "-smoke"}.get(label, "-" + label)

    if a.merge:
        with open(os.path.join(out_dir, f"latest{suffix}.json")) as f:
            old = json.load(f)
        kept = [p for p in ("e2e", "ceilings", "batch", "growth", "partitions", "mapping", "freshness", "crash", "shutdown") if p not in phases]
        for p in kept:
            for key in {"batch": ["batch_sizes"], "ceilings": ["ceilings", "ceiling_sweeps", "paired_lp_best"]}.get(p, [p]):
                res[key] = old.get(key, res.get(key))
            res["phase_commits"][p] = old.get("phase_commits", {}).get(p, old["git_commit"])
        res["crash_topic"] = old.get("crash_topic")
        res["label"] = old["label"]

    def phase(name):
        now, d = code_state()
        code_dirty = [l for l in d if not any(l[3:].startswith(o) for o in OUTPUTS)]
        start_dirty = [l for l in dirty if not any(l[3:].startswith(o) for o in OUTPUTS)]
        if now != commit or code_dirty != start_dirty:
            raise RuntimeError(f"the code changed during the run (HEAD {now[:7]}, started at {commit[:7]})")
        if name != "warm-up":
            res["phase_commits"][name] = commit
        log(f"phase {name}")

    def save():
        res["summary"] = summarize(res)
        best = res["summary"].get("log_processor_best") or {}
        tuned = res["summary"].get("peer_tuned") or {}
        res["ratio_combined"] = res["summary"]["ratio_combined"]
        res["ratio_peer"] = ratio(best.get("records_per_s"), tuned.get("records_per_s"))
        res["single_commit"] = len(set(res["phase_commits"].values())) <= 1
        if BASE_LP:
            res["compare"] = {k: {"median_records_per_s": statistics.median(r["records_per_s"] for r in runs),
                                  "median_cpu_s_per_million": statistics.median(r["cpu_s_per_million"] for r in runs),
                                  "max_peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}
                              for k, runs in (("before", res["e2e"].get("compare_base", [])),
                                              ("after", res["e2e"]["log_processor_best"])) if runs}
        with open(os.path.join(out_dir, f"latest{suffix}.json"), "w") as f:
            json.dump(res, f, indent=2)
        with open(os.path.join(out_dir, f"latest{suffix}.md"), "w") as f:
            f.write(markdown(res))

    t_start = time.monotonic()
    # The shutdown phase makes its own topics; the others share the pre-loaded one.
    throughput = [p for p in phases if p != "shutdown"]
    dump = os.path.join(WORK, f"dump_{topic}.tsv")
    if throughput:
        log(f"loadgen {n} records to {topic}")
        res["loadgen_seconds"] = loadgen(topic, n)
        dump_topic(topic, n, dump)
        with open(dump, "rb") as f:
            res["record_bytes_avg"] = round(sum(len(line.split(b"\t", 4)[4]) - 1 for line in f) / n)
    elif a.merge:
        # Only the shutdown phase runs: the other phases' figures, and what they ran on, stay.
        for key in ("records", "runs", "default_runs", "sweep_records", "topic", "loadgen_seconds",
                    "record_bytes_avg"):
            res[key] = old.get(key)
    try:
        # Fresh JVMs (OpenSearch, Kafka) spend minutes compiling their hot paths: the first
        # bulk requests cost several times the CPU of later ones. Warm every store up first.
        if throughput:
            phase("warm-up")
            warm = head_dump(dump, min(n, 100_000), os.path.join(WORK, f"warm_{topic}.tsv"))
            for i in range(2):
                r = ceiling_load("both", f"bwarm{i}_{stamp}", warm, topic, min(n, 100_000), 1000, 4)
                log(f"warm-up {i + 1}/2: {r['records_per_s']} rec/s, {r['total_cpu_s_per_million']} CPU s / 1M")
            os.remove(warm)
        if "e2e" in phases:
            phase("e2e")
            order = [("lp_best", "log_processor_best", n), ("peer", "peer_tuned", n)]
            if BASE_LP:
                order = [("lp_best_base", "compare_base", n), ("lp_best", "log_processor_best", n)]
                res["e2e"]["compare_base"] = []
                res["compare_base_binary"] = os.path.relpath(BASE_LP, ROOT)
                res["compare_after_env"] = AFTER_ENV
            plan = [order] * runs
            if BASE_LP:
                # Alternate which binary goes first, so neither always meets the warmer store.
                plan = [order if i % 2 == 0 else order[::-1] for i in range(runs)]
            for i in range(0 if BASE_LP else a.default_runs):
                plan[i % len(plan)] = plan[i % len(plan)] + [("lp", "log_processor_defaults", n),
                                                              ("peer_defaults", "peer_defaults", peer_default_n)]
            for i, step in enumerate(plan):
                for kind, key, k in step:
                    ident = f"b{kind.replace('_', '')}{i}_{stamp}"
                    log(f"e2e {key} run {i + 1}: {k} records")
                    try:
                        r = e2e_run(kind, ident, topic, k)
                    finally:
                        cleanup(ident, ident.replace("_", "-"), template_of(kind, ident))
                    log(f"  {r['seconds']} s, {r['records_per_s']} rec/s, cpu {r['cpu_s']} s, rss {r['peak_rss_mib']} MiB")
                    res["e2e"][key].append(r)
                    save()
        if "ceilings" in phases:
            phase("ceilings")
            res["ceilings"] = {"kafka_consume": [], "pg": [], "es": [], "combined": []}
            sweep_dump = head_dump(dump, sweep_n, os.path.join(WORK, f"sweep_{topic}.tsv"))
            best = {}
            for mode, name in (("pg", "pg"), ("es", "es"), ("both", "combined")):
                pts = []
                for b, cc in CEILING_GRID[mode]:
                    ident = f"bceil{mode}{b}x{cc}_{stamp}"
                    r = ceiling_load(mode, ident, sweep_dump, topic, sweep_n, b, cc)
                    log(f"ceiling sweep {mode} bulk {b} x {cc}: {r['records_per_s']} rec/s, loader core share {r['loader_core_share']}")
                    pts.append(r)
                res["ceiling_sweeps"][name] = pts
                best[name] = max(pts, key=lambda r: r["records_per_s"])
                save()
            os.remove(sweep_dump)
            res["paired_lp_best"] = []
            for i in range(runs):
                res["ceilings"]["kafka_consume"].append(ceiling_kafka(topic, n))
                for mode, name in (("pg", "pg"), ("es", "es")):
                    b, cc = best[name]["batch"], best[name]["concurrency"]
                    res["ceilings"][name].append(ceiling_load(mode, f"bceil{mode}{i}_{stamp}", dump, topic, n, b, cc))
                # The combined ceiling and log-processor back to back, alternating which goes
                # first, so each pair meets the machine in the same state.
                b, cc = best["combined"]["batch"], best["combined"]["concurrency"]
                pair = [lambda: res["ceilings"]["combined"].append(
                            ceiling_load("both", f"bceilboth{i}_{stamp}", dump, topic, n, b, cc)),
                        lambda: res["paired_lp_best"].append(paired_lp_run(f"bpair{i}_{stamp}", topic, n))]
                for step in (pair if i % 2 == 0 else pair[::-1]):
                    step()
                log(f"ceilings run {i + 1}/{runs}: " + ", ".join(f"{k} {v[-1]['records_per_s']}/s" for k, v in res["ceilings"].items())
                    + f"; paired log-processor best {res['paired_lp_best'][-1]['records_per_s']}/s")
                save()
        if "batch" in phases:
            phase("batch")
            for b in (1, 10, 100, 1000, 5000):
                k = min(n, {1: batch_k // 25, 10: batch_k // 5}.get(b, batch_k))
                ident = f"bbatch{b}_{stamp}"
                log(f"batch size {b}: {k} records")
                try:
                    r = batch_run(ident, topic, b, k)
                finally:
                    cleanup(ident, ident.replace("_", "-"), lp_template_name(ident))
                log(f"  {r['steady_records_per_s']} rec/s, SIGTERM->exit {r['sigterm_to_exit_ms']} ms")
                res["batch_sizes"].append(r)
                save()
            plot(res["batch_sizes"], os.path.join(ROOT, "docs", "batch-size.png") if label == "full"
                 else os.path.join(WORK, "batch-size.png"))
        if "growth" in phases:
            phase("growth")
            points = [(p, 0) for p in (1, 6, 24, 96)] + [(6, b) for b in (200, 2048, 20480)]
            for parts, size in points:
                k = min(growth_n, (400 << 20) // max(size, 400)) if size else growth_n
                gtopic = f"bench_g{parts}p{size}b_{stamp}"
                loadgen(gtopic, k, parts, size)
                ident = f"bgrow{parts}p{size}b_{stamp}"
                log(f"growth: {parts} partitions, {size or 'natural'} B, {k} records")
                try:
                    r = e2e_run("lp", ident, gtopic, k, partitions=parts)
                finally:
                    cleanup(ident, ident.replace("_", "-"), lp_template_name(ident))
                avg = size or res["record_bytes_avg"]
                row = {"partitions": parts, "record_bytes": avg, "records": k, "topic": gtopic,
                       "records_per_s": r["records_per_s"], "mib_per_s": round(r["records_per_s"] * avg / 2**20, 2),
                       "cpu_s_per_million": r["cpu_s_per_million"], "total_cpu_s_per_million": r["total_cpu_s_per_million"],
                       "services_cpu_s_per_million": r["services_cpu_s_per_million"], "peak_rss_mib": r["peak_rss_mib"]}
                log(f"  {row['records_per_s']} rec/s, {row['mib_per_s']} MiB/s, rss {row['peak_rss_mib']} MiB")
                res["growth"].append(row)
                save()
        if "partitions" in phases:
            phase("partitions")
            res["partitions"] = []
            for parts in (1, 2, 6, 24):
                ptopic = f"bench_p{parts}_{stamp}"
                loadgen(ptopic, growth_n, parts, 0)
                for in_flight in ("1", "2"):
                    ident = f"bpart{parts}f{in_flight}_{stamp}"
                    log(f"partitions: {parts}, LP_WORKER_IN_FLIGHT={in_flight}, {growth_n} records")
                    try:
                        r = e2e_run("lp_best", ident, ptopic, growth_n, partitions=parts,
                                    extra_env={"LP_WORKER_IN_FLIGHT": in_flight})
                    finally:
                        cleanup(ident, ident.replace("_", "-"), lp_template_name(ident))
                    row = {"partitions": parts, "worker_in_flight": int(in_flight), "records": growth_n,
                           "records_per_s": r["records_per_s"], "cpu_s_per_million": r["cpu_s_per_million"],
                           "peak_rss_mib": r["peak_rss_mib"]}
                    log(f"  {row['records_per_s']} rec/s, {row['cpu_s_per_million']} CPU s/1M")
                    res["partitions"].append(row)
                    save()
            six = {r["worker_in_flight"]: r["records_per_s"] for r in res["partitions"] if r["partitions"] == 6}
            for r in res["partitions"]:
                r["share_of_6"] = round(r["records_per_s"] / six[r["worker_in_flight"]], 2)
            save()
        if "mapping" in phases:
            phase("mapping")
            # Today's shape against five typed columns (bench/mapping-5.toml), best configuration,
            # the same records, alternating which goes first.
            mfile = os.path.join(ROOT, "bench", "mapping-5.toml")
            res["mapping"] = {"file": os.path.relpath(mfile, ROOT), "plain": [], "typed": []}
            for i in range(runs):
                order = [("plain", {}), ("typed", {"LP_MAPPING_FILE": mfile})]
                for key, extra in order if i % 2 == 0 else order[::-1]:
                    ident = f"bmap{key}{i}_{stamp}"
                    log(f"mapping {key} run {i + 1}: {n} records")
                    try:
                        r = e2e_run("lp_best", ident, topic, n, extra_env=extra)
                    finally:
                        cleanup(ident, ident.replace("_", "-"), lp_template_name(ident))
                    log(f"  {r['seconds']} s, {r['records_per_s']} rec/s, cpu {r['cpu_s']} s")
                    res["mapping"][key].append(r)
                    save()
        if "freshness" in phases:
            phase("freshness")
            best = (res.get("summary") or {}).get("log_processor_best") or {}
            peak, source = a.freshness_peak, "--freshness-peak"
            if not peak and best.get("records_per_s"):
                peak, source = best["records_per_s"], "this run's e2e phase (log-processor best, median)"
            if not peak:
                with open(os.path.join(out_dir, "latest.json")) as f:
                    full = json.load(f)
                peak = full["summary"]["log_processor_best"]["records_per_s"]
                source = f"bench/results/latest.json (commit {full['git_commit'][:7]}, log-processor best, median)"
            res["freshness"] = {"peak": peak, "peak_source": source, "seconds": a.freshness_seconds,
                                "poll_s": freshness.POLL, "rows": []}
            for kind, system in (("lp", "log-processor, defaults"), ("lp_best", "log-processor, best configuration"),
                                 ("peer", "peer, tuned")):
                for share in (0.25, 0.5, 0.9):
                    rate = int(peak * share)
                    ident = f"bfresh{kind.replace('_', '')}{int(share * 100)}_{stamp}"
                    log(f"freshness {system} at {rate} records/s ({share:.0%} of {peak})")
                    try:
                        r = freshness.run(FreshnessContext, kind, ident, rate, a.freshness_seconds)
                    finally:
                        cleanup(ident, ident.replace("_", "-"), template_of(kind, ident))
                    r.update(system=system, share=share)
                    log(f"  searchable {r['searchable']}, committed {r['committed']}")
                    res["freshness"]["rows"].append(r)
                    save()
        if "crash" in phases:
            phase("crash")
            ctopic = f"bench_crash_{stamp}"
            loadgen(ctopic, crash_n)
            cdump = os.path.join(WORK, f"dump_{ctopic}.tsv")
            dump_topic(ctopic, crash_n, cdump)
            expected = expected_keys(cdump)
            os.remove(cdump)
            for kind, key in (("lp", "log_processor"), ("peer", "peer")):
                ident = f"bcrash{kind}_{stamp}"
                log(f"crash {key}: {crash_n} records, 10 SIGKILLs")
                try:
                    r = crash_run(kind, ident, ctopic, crash_n, expected)
                finally:
                    cleanup(ident, ident.replace("_", "-"), template_of(kind, ident))
                log(f"  {r}")
                res["crash"][key] = r
                save()
            res["crash_topic"] = ctopic
        if "shutdown" in phases:
            phase("shutdown")
            rounds = a.shutdown_rounds or (3 if a.smoke else 100)
            env = shutdown_bench.Env(LP, BROKERS, DSN, ES, WORK, log)
            res["shutdown"] = shutdown_bench.run(env, rounds, stamp)
            save()
    finally:
        res["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        res["wall_seconds"] = round(time.monotonic() - t_start)
        save()
        if os.path.exists(dump):
            os.remove(dump)
    md = markdown(res)
    if label == "full":
        readme_update(md)
    print(md)
    log(f"done in {res['wall_seconds']} s")


if __name__ == "__main__":
    main()
