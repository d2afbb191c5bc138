#!/bin/sh
# The quickstart's workload: a small, deterministic CPU benchmark whose output
# depends only on its argument (the matrix parameter), so results are comparable.
n=${1:-2000}
i=0
acc=0
while [ "$i" -lt "$n" ]; do
  acc=$(( (acc * 31 + i) % 1000003 ))
  i=$((i + 1))
done
echo "iterations=$n checksum=$acc"
