"""Run every benchmark and print one table. `python benchmarks/run_all.py` (about an hour on 2 cores: the
index and 1,000 new faces at 500,000 faces take most of it).

Each figure comes with its baseline or target measured in the same run; the machines are shared and
noisy, so read ratios, not absolute times.
"""

from __future__ import annotations

import os
import platform
import time

import bench_bundles
import bench_census
import bench_curation
import bench_decode
import bench_export_disk
import bench_immich_ml
import bench_new_faces
import bench_nochange
import bench_pages
import bench_pool_reach
import bench_queries
import bench_route

import bench_cluster
import bench_index
import bench_memory
import bench_poll
import bench_pool
import bench_recognizer
import bench_status
import bench_sync


def main() -> None:
    started = time.perf_counter()
    rows: list[tuple[str, str, str]] = []
    for name, run in (
        ("sync throughput", bench_sync.main),
        ("decoding large JPEGs at reduced scale", bench_decode.main),
        ("recognizer batching", bench_recognizer.main),
        ("immich-ml services", bench_immich_ml.main),
        ("polling", bench_poll.main),
        ("the census", bench_census.main),
        ("status", bench_status.main),
        ("memory", bench_memory.main),
        ("clustering", bench_cluster.main),
        ("reading the pool", bench_pool.main),
        ("corrections", bench_curation.main),
        ("review pages", bench_pages.main),
        ("index", bench_index.main),
        ("identities the index search reads", bench_route.main),
        ("export disk use", bench_export_disk.main),
        ("swap bundles", bench_bundles.main),
        ("a cycle with nothing new", bench_nochange.main),
        ("store queries of the page, status, faceset list", bench_queries.main),
        ("1,000 new faces", bench_new_faces.main),
        ("the pool searched exactly or through a graph index", bench_pool_reach.main),
    ):
        print(f"\n== {name} ==", flush=True)
        rows += run()
    print(
        f"\n== results ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{time.perf_counter() - started:.0f} s) =="
    )
    width = max(len(row[0]) for row in rows)
    middle = max(len(row[1]) for row in rows)
    for what, figure, verdict in rows:
        print(f"{what:<{width}}  {figure:<{middle}}  {verdict}")


if __name__ == "__main__":
    main()
