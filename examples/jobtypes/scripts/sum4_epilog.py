"""sum4's epilog: once its sub-jobs completed, report the last one's output."""

from jobmill_job import listed, report

children = listed("JOBMILL_CHILDREN_FILE")
total = int(children[-1]["report"]["output"])
print(total)
report({"output": total})
