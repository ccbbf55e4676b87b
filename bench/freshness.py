#!/usr/bin/env python3
"""The freshness phase of the benchmark: how long a record takes from its producer to being
searchable, and to being committed in PostgreSQL, at a steady produce rate below the peak.

One run per system and rate, each on a fresh 6-partition topic and fresh stores:
  1. the system starts; 600 warm-up records are produced and waited for in both stores (the
     group joined, the stores' first writes done: not measured);
  2. `log-processor loadgen --rate R` produces R records a second for SECONDS seconds (Kafka's
     CreateTime of each record is its produce time: librdkafka stamps it when the record is
     handed to the producer);
  3. every POLL seconds a probe reads, per partition, the highest offset the search store finds
     (`_msearch`, one max aggregation per partition over offsets not yet seen, no refresh forced:
     what a user's search sees) and the highest offset PostgreSQL holds (one primary-key lookup
     per partition: a committed row);
  4. once both stores hold the last record, the system gets SIGTERM; the produce times are read
     back from Kafka (kcat), and each measured record's latency is the time the first query
     that saw its offset answered (each store's query stamped on its own) minus its produce time.
Both systems write each partition in offset order, so a partition's highest visible offset
means every lower one is visible too. Latencies are rounded up to the probe's resolution (POLL).
Percentiles: p50, p95, p99 and max over every measured record.
"""
import json
import statistics
import subprocess
import threading
import time

POLL = 0.1
WARM_RECORDS = 600


def percentiles(xs):
    if not xs:
        return None
    s = sorted(xs)

    def at(q):
        return round(s[min(len(s) - 1, int(q * len(s)))], 3)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(s[-1], 3),
            "mean": round(statistics.fmean(s), 3), "records": len(s)}


def first_seen(events, store, partition, offset):
    """The time of the first probe whose `store` maximum of `partition` reached `offset`."""
    lo, hi = 0, len(events)
    while lo < hi:  # events are in time order and each maximum only grows
        mid = (lo + hi) // 2
        if events[mid][store].get(partition, -1) >= offset:
            hi = mid
        else:
            lo = mid + 1
    return events[lo]["t"][store] if lo < len(events) else None


def latencies(events, produced, store):
    out, missing = [], 0
    for (p, o), t0 in produced.items():
        t = first_seen(events, store, p, o)
        if t is None:
            missing += 1
        else:
            out.append(max(t - t0, 0.0))
    return out, missing


class Psql:
    """One psql session for all of a probe's queries: a new connection ten times a second (a
    psql process and a PostgreSQL backend each) would take CPU from the systems measured."""

    END = "__probe_end__"

    def __init__(self, dsn):
        self.p = subprocess.Popen(["psql", dsn, "-X", "-tAq"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def query(self, sql):
        """The result's lines; none when the query failed (psql goes on with the next one)."""
        self.p.stdin.write(f"{sql};\n\\echo {self.END}\n")
        self.p.stdin.flush()
        lines = []
        for line in self.p.stdout:
            line = line.rstrip("\n")
            if line == self.END:
                return lines
            lines.append(line)
        raise RuntimeError("the probe's psql session ended")

    def close(self):
        self.p.stdin.close()
        self.p.wait(10)


class Probe(threading.Thread):
    """Polls both stores for each partition's highest visible offset."""

    def __init__(self, ctx, ident, topic, partitions):
        super().__init__(daemon=True)
        self.ctx, self.schema, self.topic, self.partitions = ctx, ident, topic, partitions
        self.pg = Psql(ctx.dsn)
        self.prefix = ident.replace("_", "-")
        self.events, self.stop = [], threading.Event()
        self.seen = {"es": {}, "pg": {}}

    def es_max(self):
        lines = []
        for p in range(self.partitions):
            lines.append(json.dumps({"index": f"{self.prefix}-*", "ignore_unavailable": True,
                                     "allow_no_indices": True}))
            lines.append(json.dumps({"size": 0, "track_total_hits": False, "query": {"bool": {"filter": [
                {"term": {"kafka.partition": p}},
                {"range": {"kafka.offset": {"gte": self.seen["es"].get(p, 0)}}}]}},
                "aggs": {"m": {"max": {"field": "kafka.offset"}}}}))
        st, b = self.ctx.es("POST", "/_msearch", "\n".join(lines) + "\n", ctype="application/x-ndjson")
        out = {}
        if st == 200 and isinstance(b, dict):
            for p, r in enumerate(b.get("responses", [])):
                v = (((r or {}).get("aggregations") or {}).get("m") or {}).get("value")
                if v is not None:
                    out[p] = int(v)
        return out

    def pg_max(self):
        q = " UNION ALL ".join(
            f"SELECT {p}, (SELECT max(kafka_offset) FROM {self.schema}.log_records "
            f"WHERE topic = '{self.topic}' AND kafka_partition = {p})" for p in range(self.partitions))
        out = {}
        for line in self.pg.query(q):
            p, _, v = line.partition("|")
            if v:
                out[int(p)] = int(v)
        return out

    def run(self):
        while not self.stop.is_set():
            started = time.time()
            # Each store's answer is stamped when it arrived, not after the other store's query
            # too: a record counts as visible from the end of the query that saw it (an upper
            # bound on its latency, never below it).
            es, es_t = self.es_max(), time.time()
            pg, pg_t = self.pg_max(), time.time()
            # A maximum never goes back (a probe that failed keeps the last one seen).
            for store, now in (("es", es), ("pg", pg)):
                for p, v in now.items():
                    self.seen[store][p] = max(self.seen[store].get(p, -1), v)
            self.events.append({"t": {"es": es_t, "pg": pg_t},
                                "es": dict(self.seen["es"]), "pg": dict(self.seen["pg"])})
            time.sleep(max(0.0, POLL - (time.time() - started)))
        self.pg.close()

    def holds(self, ends):
        return all(self.seen[s].get(p, -1) >= end - 1 for s in ("es", "pg") for p, end in ends.items() if end > 0)


def produce_times(ctx, topic, first):
    """Kafka's CreateTime (s) of every record at or past `first` (per partition)."""
    out = subprocess.run(["kcat", "-C", "-b", ctx.brokers, "-t", topic, "-e", "-o", "beginning", "-q",
                          "-f", "%p\t%o\t%T\n"], capture_output=True, text=True, check=True).stdout
    times = {}
    for line in out.splitlines():
        p, o, t = (int(x) for x in line.split("\t"))
        if o >= first.get(p, 0):
            times[(p, o)] = t / 1000.0
    return times


def run(ctx, kind, ident, rate, seconds, partitions=6):
    """One system at one rate. `ctx` gives the harness' helpers (see bench.py)."""
    topic = f"{ident}_t"
    ctx.loadgen(topic, 0, partitions)
    ctx.prepare(kind, ident)
    logf = open(f"{ctx.work}/{ident}.log", "wb")
    proc = ctx.start(kind, ident, topic, logf)
    probe = Probe(ctx, ident, topic, partitions)
    probe.start()
    try:
        ctx.loadgen(topic, WARM_RECORDS, partitions, rate=WARM_RECORDS)
        warm_ends = ctx.end_offsets(topic, partitions)
        deadline = time.time() + 120
        while not probe.holds(warm_ends):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{kind}: warm-up records not stored (see {logf.name})")
            time.sleep(POLL)
        count = int(rate * seconds)
        t0 = time.time()
        ctx.loadgen(topic, count, partitions, rate=rate, start_seq=WARM_RECORDS)
        produced_for = time.time() - t0
        ends = ctx.end_offsets(topic, partitions)
        deadline = time.time() + 300
        while not probe.holds(ends):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{kind}: records not stored within 300 s (see {logf.name})")
            time.sleep(POLL)
    finally:
        probe.stop.set()
        probe.join()
        proc.send_signal(15)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        logf.close()
    produced = produce_times(ctx, topic, warm_ends)
    res = {"kind": kind, "rate": rate, "records": len(produced), "produce_seconds": round(produced_for, 2),
           "achieved_rate": round(len(produced) / produced_for) if produced_for else None,
           "probes": len(probe.events), "poll_s": POLL}
    for store, name in (("es", "searchable"), ("pg", "committed")):
        xs, missing = latencies(probe.events, produced, store)
        res[name] = percentiles(xs)
        res[f"{name}_missing"] = missing
    return res


def markdown(rows):
    L = ["| system | rate (share of peak) | achieved records/s | produce -> searchable p50 / p95 / p99 / max (s) | "
         "produce -> committed in PostgreSQL p50 / p95 / p99 / max (s) |", "|---|---|---|---|---|"]
    for r in rows:
        def cell(x):
            return "-" if not x else f"{x['p50']} / {x['p95']} / {x['p99']} / {x['max']}"
        L.append(f"| {r['system']} | {r['rate']:,} ({r['share']:.0%}) | {r['achieved_rate']:,} | "
                 f"{cell(r['searchable'])} | {cell(r['committed'])} |")
    return "\n".join(L)
