#!/bin/sh
# Stand-in for the OCPS Alert Production job: prints its inputs and writes a small result file
# ap_<visit>_<ccd>.txt into AP_JOB_OUTPUT_DIR. Every input arrives as an environment variable.
set -eu

: "${AP_JOB_OUTPUT_DIR:?}" "${AP_VISIT_ID:?}" "${AP_CCD_NUM:?}" "${AP_REPO:?}"
: "${AP_TEMPLATE:?}" "${AP_CALIB:?}" "${AP_FILTER:?}"

echo "ap job ${JOBMILL_JOB_ID:-} starting"
env | grep '^AP_' | sort

mkdir -p "$AP_JOB_OUTPUT_DIR"
result="$AP_JOB_OUTPUT_DIR/ap_${AP_VISIT_ID}_${AP_CCD_NUM}.txt"
{
    echo "visit=$AP_VISIT_ID"
    echo "ccd=$AP_CCD_NUM"
    echo "filter=$AP_FILTER"
    echo "repo=$AP_REPO"
    echo "template=$AP_TEMPLATE"
    echo "calib=$AP_CALIB"
} > "$result"
echo "wrote $result"
