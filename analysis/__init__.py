"""Study analysis for the service: designs that expand into jobs, paired statistics, the
report and its plots."""
