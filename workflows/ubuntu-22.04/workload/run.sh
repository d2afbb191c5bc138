#!/bin/sh
# The Ubuntu workflow's workload, copied onto its data disk: a deterministic CPU
# benchmark whose output depends only on its argument (the iteration count), so
# results from different kernels or machines compare directly.
n=${1:-100000}
i=0
acc=0
while [ "$i" -lt "$n" ]; do
  acc=$(( (acc * 31 + i) % 1000003 ))
  i=$((i + 1))
done
echo "iterations=$n checksum=$acc"
