# Shell functions shared by the scripts that compare benchmark runs
# (bench_compare.sh, bench_audit.sh, bench_batch_compare.sh); sourced.

# The median of the numbers on stdin, one a line.
median() {
    sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

# The decision benchmark's data, as `make bench` leaves it (bench/store.sh):
# sets data, decisions, store and catalog; NBX_BENCH_DATA and
# NBX_BENCH_DECISIONS override.
decision_data() {
    data=${NBX_BENCH_DATA:-/tmp/nbx-bench-data}
    decisions=${NBX_BENCH_DECISIONS:-100000}
    store=$data/decide-store-1m
    catalog=$data/catalog-100.json
}
