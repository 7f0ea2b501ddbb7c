"""The serving simulator: workloads (`workload`), iteration-level scheduling (`scheduler`), the simpy engine (`engine`) and the metrics of a run (`metrics`)."""
