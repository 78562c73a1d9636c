# Shell functions shared by the scripts that compare benchmark runs
# (bench_compare.sh, bench_audit.sh, bench_batch_compare.sh); sourced.

# The median of the numbers on stdin, one a line.
median() {
    sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
