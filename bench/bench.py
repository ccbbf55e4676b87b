#!/usr/bin/env python3
"""log-processor benchmark against a Benthos peer and against raw ceilings.

Run through bench/run.sh (full) or bench/smoke.sh (tiny). Needs the services up, the release
binary built and the peer built (bench/build-peer.sh); matplotlib for the plot.

Phases, all on one pre-loaded topic (well-formed loadgen records, 6 partitions):
  e2e       log-processor and the peer, alternating, fresh group/schema/index each run: time
            from process start until PostgreSQL and OpenSearch both hold every record; CPU
            seconds (utime+stime), peak RSS (VmHWM); for log-processor also /metrics and
            per-thread CPU; CPU of the services during each run.
  ceilings  kcat consuming the topic to /dev/null; psql \\copy of the same rows into a table
            like log_records; bulk indexing of the same documents (1000 per _bulk, 4 senders).
  batch     LP_BATCH_MAX_RECORDS sweep: steady-state throughput and SIGTERM-to-exit under load.
  crash     10 SIGKILLs (with restarts) during a run of each, on a second topic of as many
            records (--crash-records); then lost and duplicated records counted from the stores.
--phases picks phases; --merge keeps the others from the existing results file.
Writes bench/results/latest.json, latest.md and docs/batch-size.png (smoke: latest-smoke.* and
bench/work/batch-size-smoke.png).
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

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
WORK = os.path.join(ROOT, "bench", "work")
LP = os.path.join(ROOT, "target", "release", "log-processor")
PEER = os.path.join(WORK, "peer", "benthos-peer")
PEER_TMPL = os.path.join(ROOT, "bench", "peer", "config.yaml.tmpl")
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
# The mapping log-processor puts in its index template (src/sink/elastic.rs).
ES_TEMPLATE = {
    "priority": 100,
    "template": {
        "settings": {"index.mapping.total_fields.limit": 2000},
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


def pg_count(schema):
    out = psql(f"SELECT count(*) FROM {schema}.log_records", check=False)
    return int(out) if out.isdigit() else 0


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
def proc_cpu(pid):
    """utime+stime in seconds of a live process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / CLK
    except (OSError, IndexError):
        return None


def proc_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
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


def service_cpu():
    """CPU seconds so far of Kafka, OpenSearch and all PostgreSQL processes (live ones)."""
    tot = {"kafka": 0.0, "opensearch": 0.0, "postgresql": 0.0}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
            with open(f"/proc/{pid}/stat") as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        parts = s.rsplit(")", 1)[1].split()
        cpu = (int(parts[11]) + int(parts[12])) / CLK
        if comm == "postgres" or cmd.startswith(b"postgres:"):
            tot["postgresql"] += cpu
        elif b"java" in cmd[:200] or comm == "java":
            if b"kafka.Kafka" in cmd or b"kafka" in cmd.split(b" -cp ")[0][-0:] and b"kafka.Kafka" in cmd:
                tot["kafka"] += cpu
            elif b"opensearch" in cmd.lower() or b"OpenSearch" in cmd:
                tot["opensearch"] += cpu
    return tot


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


def peer_config(ident, topic, batch=1000, session_timeout=None):
    with open(PEER_TMPL) as f:
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
    checkpoint_limit: 4096
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
    for k, v in {"@BROKERS@": BROKERS, "@TOPIC@": topic, "@GROUP@": ident, "@DSN@": dsn,
                 "@TABLE@": f"{ident}.log_records", "@ES_URL@": ES,
                 "@INDEX_PREFIX@": ident.replace("_", "-"), "@BATCH@": str(batch)}.items():
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


def start(kind, ident, topic, logf, extra_env=None, batch=1000, session_timeout=None):
    if kind == "lp":
        return subprocess.Popen([LP, "run"], env=lp_env(ident, topic, extra_env),
                                stdout=logf, stderr=logf)
    cfg = peer_config(ident, topic, batch, session_timeout)
    return subprocess.Popen([PEER, "-c", cfg], stdout=logf, stderr=logf)


def e2e_run(kind, ident, topic, n, extra_env=None, poll=0.5, timeout=1800):
    """Start, wait until both stores hold n records, snapshot, SIGTERM. Returns the figures."""
    prefix = ident.replace("_", "-")
    if kind == "peer":
        peer_prepare(ident)
    logf = open(os.path.join(WORK, f"{ident}.log"), "wb")
    svc0 = service_cpu()
    t0 = time.monotonic()
    p = start(kind, ident, topic, logf, extra_env)
    pc = ec = 0
    samples = []
    while True:
        time.sleep(poll)
        if p.poll() is not None:
            raise RuntimeError(f"{kind} exited early ({p.returncode}); see {logf.name}")
        pc = pg_count(ident) if pc < n else pc
        ec = es_count(prefix) if ec < n else ec
        samples.append((round(time.monotonic() - t0, 2), pc, ec))
        if pc >= n and ec >= n:
            break
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{kind} timed out at pg={pc} es={ec}")
    elapsed = time.monotonic() - t0
    res = {"seconds": round(elapsed, 2), "records_per_s": round(n / elapsed),
           "cpu_s": proc_cpu(p.pid), "peak_rss_mib": round((proc_hwm_kib(p.pid) or 0) / 1024, 1),
           "services_cpu_s": diff(svc0, service_cpu())}
    res["cpu_s_per_million"] = round(res["cpu_s"] * 1e6 / n, 1)
    first = next((s for s in samples if min(s[1], s[2]) > 0), None)
    if first:
        res["first_records_at_s"] = first[0]
        res["steady_records_per_s"] = round((n - min(first[1], first[2])) / max(elapsed - first[0], 0.01))
    if kind == "lp":
        res["threads_cpu_s"] = thread_cpu(p.pid)
        hist, counters = parse_histograms(metrics_text())
        res["metrics"] = hist
        res["counters"] = counters
    t1 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    try:
        res["exit_code"] = p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        res["exit_code"] = p.wait()
    res["sigterm_to_exit_ms"] = round(1000 * (time.monotonic() - t1))
    logf.close()
    return res


# ---------------------------------------------------------------- data preparation
def loadgen(topic, n):
    t = time.monotonic()
    subprocess.run([LP, "loadgen", "--kafka-brokers", BROKERS, "--topic", topic, "--count", str(n),
                    "--partitions", "6"], check=True, stderr=subprocess.DEVNULL)
    return round(time.monotonic() - t, 1)


def dump_topic(topic, n, path):
    """The topic's records as partition, offset, key, timestamp, payload lines (for the ceilings)."""
    with open(path, "wb") as f:
        subprocess.run(["kcat", "-C", "-b", BROKERS, "-t", topic, "-e", "-o", "beginning", "-q",
                        "-f", "%p\t%o\t%k\t%T\t%s\n"], stdout=f, check=True)
    lines = sum(1 for _ in open(path, "rb"))
    if lines != n:
        raise RuntimeError(f"dump has {lines} lines, expected {n}")


def pg_escape(v):
    if v is None:
        return "\\N"
    return v.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def build_ceiling_inputs(topic, dump, tsv, bulkdir, bulk_size=1000):
    """From the dump: a COPY text file with log_records' columns and _bulk bodies of the
    documents log-processor writes (same fields, same ids)."""
    os.makedirs(bulkdir, exist_ok=True)
    recognised = ("timestamp", "level", "service", "message")
    bodies, cur, i = [], [], 0
    with open(dump, encoding="utf-8") as fin, open(tsv, "w", encoding="utf-8") as fout:
        for line in fin:
            p, o, k, kts, payload = line.rstrip("\n").split("\t", 4)
            d = json.loads(payload)
            ts = d.get("timestamp")
            fields = {a: b for a, b in d.items() if a not in recognised}
            kts_iso = datetime.datetime.fromtimestamp(int(kts) / 1000, datetime.timezone.utc).isoformat()
            key_hex = "\\\\x" + k.encode().hex()
            fout.write("\t".join([topic, p, o, pg_escape(ts), pg_escape(d.get("level")),
                                  pg_escape(d.get("service")), pg_escape(d.get("message")),
                                  pg_escape(json.dumps(fields, separators=(",", ":"))),
                                  key_hex, kts_iso]) + "\n")
            doc = {"@timestamp": ts, "level": d.get("level"), "service": d.get("service"),
                   "message": d.get("message"), "fields": fields,
                   "kafka": {"topic": topic, "partition": int(p), "offset": int(o)}}
            day = ts[:10].replace("-", ".")
            cur.append(json.dumps({"index": {"_index": "@PREFIX@-" + day, "_id": f"{topic}-{p}-{o}"}}))
            cur.append(json.dumps(doc, separators=(",", ":")))
            if len(cur) == 2 * bulk_size:
                bodies.append(cur)
                cur = []
    if cur:
        bodies.append(cur)
    for i, b in enumerate(bodies):
        with open(os.path.join(bulkdir, f"{i:05d}.ndjson"), "w") as f:
            f.write("\n".join(b) + "\n")
    return len(bodies)


def ceiling_kafka(topic, n):
    t = time.monotonic()
    subprocess.run(["kcat", "-C", "-b", BROKERS, "-t", topic, "-e", "-o", "beginning", "-q"],
                   stdout=subprocess.DEVNULL, check=True)
    s = time.monotonic() - t
    return {"seconds": round(s, 2), "records_per_s": round(n / s)}


def ceiling_pg(ident, tsv, n):
    psql(TABLE_DDL.format(s=ident))
    t = time.monotonic()
    r = subprocess.run(["psql", DSN, "-v", "ON_ERROR_STOP=1", "-qc",
                        f"\\copy {ident}.log_records (topic, kafka_partition, kafka_offset, ts, level, service, message, fields, kafka_key, kafka_ts) FROM '{tsv}'"],
                       capture_output=True, text=True)
    s = time.monotonic() - t
    if r.returncode != 0:
        raise RuntimeError("copy: " + r.stderr)
    got = pg_count(ident)
    cleanup(schema=ident)
    if got != n:
        raise RuntimeError(f"copy loaded {got} of {n}")
    return {"seconds": round(s, 2), "records_per_s": round(n / s)}


def ceiling_es(ident, bulkdir, n, senders=4):
    prefix = ident.replace("_", "-")
    body = dict(ES_TEMPLATE, index_patterns=[f"{prefix}-*"])
    es("PUT", f"/_index_template/bench-{prefix}", body)
    files = sorted(os.listdir(bulkdir))
    u = urllib.parse.urlparse(ES)

    def send(fname):
        with open(os.path.join(bulkdir, fname)) as f:
            data = f.read().replace("@PREFIX@", prefix).encode()
        for _ in range(20):
            c = http.client.HTTPConnection(u.hostname, u.port or 9200, timeout=120)
            c.request("POST", "/_bulk", body=data, headers={"Content-Type": "application/x-ndjson"})
            r = c.getresponse()
            out = json.loads(r.read())
            c.close()
            if r.status == 200 and not out.get("errors"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"bulk {fname} failed")

    t = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(senders) as ex:
        list(ex.map(send, files))
    s = time.monotonic() - t
    es("POST", f"/{prefix}-*/_refresh")
    got = es_count(prefix)
    cleanup(prefix=prefix, template=f"bench-{prefix}")
    if got != n:
        raise RuntimeError(f"bulk indexed {got} of {n}")
    return {"seconds": round(s, 2), "records_per_s": round(n / s), "senders": senders}


# ---------------------------------------------------------------- batch-size sweep
def batch_run(ident, topic, batch, k):
    """Throughput until k records are in both stores, then SIGTERM under load (backlog left)."""
    prefix = ident.replace("_", "-")
    logf = open(os.path.join(WORK, f"{ident}.log"), "wb")
    t0 = time.monotonic()
    p = start("lp", ident, topic, logf, {"LP_BATCH_MAX_RECORDS": str(batch)})
    first = None
    while True:
        time.sleep(0.25)
        if p.poll() is not None:
            raise RuntimeError(f"lp exited early; see {logf.name}")
        c = min(pg_count(ident), es_count(prefix))
        now = time.monotonic() - t0
        if first is None and c > 0:
            first = (now, c)
        if c >= k:
            break
        if now > 900:
            raise RuntimeError("batch run timed out")
    cpu = proc_cpu(p.pid)
    t1 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    try:
        code = p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        code = p.wait()
    stop_ms = round(1000 * (time.monotonic() - t1))
    logf.close()
    rate = (c - first[1]) / max(now - first[0], 0.01)
    return {"batch_max_records": batch, "records_measured": k, "steady_records_per_s": round(rate),
            "cpu_s_per_million": round(cpu * 1e6 / c, 1), "sigterm_to_exit_ms": stop_ms,
            "exit_code": code}


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
    if kind == "peer":
        peer_prepare(ident)
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
        p.wait()
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
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
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


def summarize(res):
    s = {}
    lp = [r["seconds"] for r in res["e2e"]["log_processor"]]
    pe = [r["seconds"] for r in res["e2e"]["peer"]]
    n = res["records"]
    if lp:
        s["lp_median_s"] = med(lp)
        s["lp_records_per_s"] = round(n / statistics.median(lp))
        s["lp_cpu_s_per_million"] = med([r["cpu_s_per_million"] for r in res["e2e"]["log_processor"]])
        s["lp_peak_rss_mib"] = max(r["peak_rss_mib"] for r in res["e2e"]["log_processor"])
    if pe:
        s["peer_median_s"] = med(pe)
        s["peer_records_per_s"] = round(n / statistics.median(pe))
        s["peer_cpu_s_per_million"] = med([r["cpu_s_per_million"] for r in res["e2e"]["peer"]])
        s["peer_peak_rss_mib"] = max(r["peak_rss_mib"] for r in res["e2e"]["peer"])
    if lp and pe:
        s["lp_speed_vs_peer"] = round(statistics.median(pe) / statistics.median(lp), 2)
    ceil = {}
    for name, runs in res.get("ceilings", {}).items():
        if runs:
            ceil[name] = round(n / statistics.median([r["seconds"] for r in runs]))
    s["ceilings_records_per_s"] = ceil
    if ceil and lp:
        slow = min(ceil, key=ceil.get)
        s["slowest_ceiling"] = slow
        s["lp_fraction_of_slowest_ceiling"] = round(s["lp_records_per_s"] / ceil[slow], 2)
    return s


def markdown(res):
    s = res["summary"]
    n = res["records"]
    L = [f"# Benchmark results ({res['label']})", "",
         f"{res['machine']['cores']} cores, {res['machine']['memory_gib']} GiB ({res['machine']['cpu']}); "
         f"commit `{res['git_commit']}`; {n:,} records (~{res['record_bytes_avg']} B JSON), 6 partitions; "
         f"{res['runs']} alternating runs each; Kafka, PostgreSQL and OpenSearch on the same machine.", "",
         "## End to end (until PostgreSQL and OpenSearch both hold every record)", "",
         "| | median s | records/s | runs (s) | CPU s / 1M records | peak RSS MiB |", "|---|---|---|---|---|---|"]
    for key, name in (("log_processor", "log-processor"), ("peer", res["versions"].get("peer") or "peer")):
        runs = res["e2e"][key]
        if runs:
            secs = [r["seconds"] for r in runs]
            L.append(f"| {name} | {med(secs)} | {round(n / statistics.median(secs)):,} | "
                     f"{', '.join(str(x) for x in secs)} | {med([r['cpu_s_per_million'] for r in runs])} | "
                     f"{max(r['peak_rss_mib'] for r in runs)} |")
    if "lp_speed_vs_peer" in s:
        L += ["", f"log-processor / peer throughput ratio: **{s['lp_speed_vs_peer']}** (peer median time / log-processor median time)."]
    L += ["", "## Ceilings (same records)", "", "| path | median s | records/s |", "|---|---|---|"]
    for name, runs in res.get("ceilings", {}).items():
        if runs:
            secs = [r["seconds"] for r in runs]
            L.append(f"| {res['ceiling_desc'][name]} | {med(secs)} | {round(n / statistics.median(secs)):,} |")
    if "lp_fraction_of_slowest_ceiling" in s:
        L += ["", f"log-processor end to end = **{s['lp_fraction_of_slowest_ceiling']}** of the slowest ceiling ({s['slowest_ceiling']})."]
    if res.get("batch_sizes"):
        L += ["", "## Batch size (LP_BATCH_MAX_RECORDS)", "",
              "| batch | records measured | steady records/s | CPU s / 1M | SIGTERM to exit under load (ms) | exit |",
              "|---|---|---|---|---|---|"]
        for r in res["batch_sizes"]:
            L.append(f"| {r['batch_max_records']} | {r['records_measured']:,} | {r['steady_records_per_s']:,} | "
                     f"{r['cpu_s_per_million']} | {r['sigterm_to_exit_ms']} | {r['exit_code']} |")
        L += ["", "Plot: `docs/batch-size.png`." if res["label"] != "smoke" else "Plot: `bench/work/batch-size-smoke.png`."]
    if res.get("crash"):
        L += ["", "## Crash cost (SIGKILL and restart)", "",
              "| | records | kills | seconds | PG rows | OS docs | lost (in neither) | missing PG | missing OS | duplicates PG | duplicates OS |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, r in res["crash"].items():
            L.append(f"| {key} | {r['records']:,} | {r['kills']} | {r['seconds']} | {r['pg_rows']:,} | {r['es_docs']:,} | "
                     f"{r['lost_in_neither_store']} | {r['missing_pg']} | {r['missing_es']} | {r['duplicates_pg']} | {r['duplicates_es']} |")
    if res.get("notes"):
        L += ["", "## Notes", ""] + [f"* {x}" for x in res["notes"]]
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--records", type=int)
    ap.add_argument("--runs", type=int)
    ap.add_argument("--phases", default="e2e,ceilings,batch,crash")
    ap.add_argument("--crash-records", type=int)
    ap.add_argument("--batch-records", type=int)
    ap.add_argument("--label")
    ap.add_argument("--merge", action="store_true",
                    help="keep the phases not run from the existing results file")
    a = ap.parse_args()
    n = a.records or (20_000 if a.smoke else 1_000_000)
    runs = a.runs or (1 if a.smoke else 3)
    crash_n = a.crash_records or n
    batch_k = a.batch_records or (20_000 if a.smoke else 200_000)  # /25 for size 1, /5 for size 10
    phases = a.phases.split(",")
    os.makedirs(WORK, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%m%d%H%M%S")
    topic = f"bench_{stamp}"
    res = {"label": a.label or ("smoke" if a.smoke else ("full" if n == 1_000_000 and runs >= 3 else "reduced")),
           "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "versions": versions(),
           "git_commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                                        text=True).stdout.strip(),
           "git_dirty": bool(subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src"],
                                            capture_output=True, text=True).stdout.strip()),
           "records": n, "runs": runs, "topic": topic, "partitions": 6,
           "settings": {"log_processor": "defaults: LP_BATCH_MAX_RECORDS=1000, LP_BATCH_LINGER_MS=200, LP_WORKERS=4, LP_WORKER_QUEUE=2",
                        "peer": "kafka_franz batching count=1000 period=200ms, pipeline threads=2, fan_out to sql_insert (max_in_flight 4) and opensearch (max_in_flight 4)"},
           "e2e": {"log_processor": [], "peer": []}, "ceilings": {}, "batch_sizes": [], "crash": {},
           "ceiling_desc": {"kafka_consume": "Kafka: kcat -C -e to /dev/null",
                            "pg_copy": "PostgreSQL: psql \\copy into a log_records-like table (PK + ts index)",
                            "es_bulk": "OpenSearch: _bulk of the same documents, 1000 per request, 4 senders"},
           "notes": [
               "Peer: Benthos v4.27.0 (github.com/benthosdev/benthos/v4, the code base Redpanda Connect continues) built from bench/peer; the Go module proxy here refuses the github.com/redpanda-data/connect/v4 sources (403 on the module zip) and this machine's package list marks that module not to use (licence); github.com/redpanda-data/benthos/v4 is served but is only the engine, without the Kafka, SQL and OpenSearch components.",
               "Peer crash runs use the sarama `kafka` input with a 6 s session timeout instead of kafka_franz (no session timeout setting in this release; 45 s franz-go default would stall each restart); log-processor crash runs use LP_SESSION_TIMEOUT_MS=6000.",
               "End-to-end time runs from process start (includes the group join) until counts in PostgreSQL (count(*)) and OpenSearch (_count, refreshed every 1 s) both reach the record count, polled every 0.5 s.",
               "Batch sweep: steady-state rate between the first stored records and the measured count; then SIGTERM with the rest of the topic still unread (under load). Fewer records for sizes 1 and 10 (see records_measured).",
               "Duplicates are counted as rows/documents beyond one per (partition, offset); both systems key rows (primary key) and documents (_id) by topic-partition-offset, so replays after a kill overwrite or skip.",
           ]}
    log(f"loadgen {n} records to {topic}")
    res["loadgen_seconds"] = loadgen(topic, n)
    dump = os.path.join(WORK, f"dump_{topic}.tsv")
    dump_topic(topic, n, dump)
    with open(dump, "rb") as f:
        res["record_bytes_avg"] = round(sum(len(line.split(b"\t", 4)[4]) - 1 for line in f) / n)
    out_dir = os.path.join(ROOT, "bench", "results")
    os.makedirs(out_dir, exist_ok=True)
    suffix = "-smoke" if a.smoke else ""

    if a.merge:
        with open(os.path.join(out_dir, f"latest{suffix}.json")) as f:
            old = json.load(f)
        kept = [p for p in ("e2e", "ceilings", "batch", "crash") if p not in phases]
        for p in kept:
            key = {"batch": "batch_sizes"}.get(p, p)
            res[key] = old[key]
        res["crash_topic"] = old.get("crash_topic")
        res["label"] = old["label"]
        res["notes"].append(f"Phases {', '.join(kept)} are from the run started {old['started']} at commit "
                            f"{old['git_commit'][:7]}; phases {', '.join(phases)} from the run started "
                            f"{res['started']} at commit {res['git_commit'][:7]}.")

    def save():
        res["summary"] = summarize(res)
        with open(os.path.join(out_dir, f"latest{suffix}.json"), "w") as f:
            json.dump(res, f, indent=2)
        with open(os.path.join(out_dir, f"latest{suffix}.md"), "w") as f:
            f.write(markdown(res))

    try:
        if "e2e" in phases:
            for i in range(runs):
                for kind, key in (("lp", "log_processor"), ("peer", "peer")):
                    ident = f"b{kind}{i}_{stamp}"
                    log(f"e2e {key} run {i + 1}/{runs}")
                    try:
                        r = e2e_run(kind, ident, topic, n)
                    finally:
                        cleanup(ident, ident.replace("_", "-"),
                                lp_template_name(ident) if kind == "lp" else "bench-" + ident.replace("_", "-"))
                    log(f"  {r['seconds']} s, {r['records_per_s']} rec/s, cpu {r['cpu_s']} s, rss {r['peak_rss_mib']} MiB")
                    res["e2e"][key].append(r)
                    save()
        if "ceilings" in phases:
            tsv = os.path.join(WORK, f"copy_{topic}.tsv")
            bulkdir = os.path.join(WORK, f"bulk_{topic}")
            log("building ceiling inputs")
            build_ceiling_inputs(topic, dump, tsv, bulkdir)
            res["ceilings"] = {"kafka_consume": [], "pg_copy": [], "es_bulk": []}
            for i in range(runs):
                log(f"ceilings run {i + 1}/{runs}")
                res["ceilings"]["kafka_consume"].append(ceiling_kafka(topic, n))
                res["ceilings"]["pg_copy"].append(ceiling_pg(f"bcopy{i}_{stamp}", tsv, n))
                res["ceilings"]["es_bulk"].append(ceiling_es(f"bbulk{i}_{stamp}", bulkdir, n))
                log("  " + ", ".join(f"{k} {v[-1]['records_per_s']}/s" for k, v in res["ceilings"].items()))
                save()
            os.remove(tsv)
            shutil.rmtree(bulkdir)
        if "batch" in phases:
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
            plot(res["batch_sizes"], os.path.join(WORK, "batch-size-smoke.png") if a.smoke
                 else os.path.join(ROOT, "docs", "batch-size.png"))
        if "crash" in phases:
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
                    cleanup(ident, ident.replace("_", "-"),
                            lp_template_name(ident) if kind == "lp" else "bench-" + ident.replace("_", "-"))
                log(f"  {r}")
                res["crash"][key] = r
                save()
            res["crash_topic"] = ctopic
    finally:
        res["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        save()
        if os.path.exists(dump):
            os.remove(dump)
    print(markdown(res))


if __name__ == "__main__":
    main()
