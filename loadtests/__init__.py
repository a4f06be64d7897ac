"""Load-testing harness for any Open Inference Protocol (KServe V2) gRPC server.

A client only: it imports nothing from the gateway. Entry points:

- ``python -m loadtests SCENARIO ...`` (``loadtests.cli``): steady, sweep, overload, compare;
- ``python -m loadtests.bench --quick|--full``: the gateway against reference servers;
- ``loadtests.runner.run_load(RunConfig, RequestPool)`` for programmatic runs.

Modules: ``workload`` (inputs, payloads, request pool), ``drivers`` (closed/open
loop), ``worker``/``runner`` (processes), ``stats`` (HDR histograms), ``events``
(marked events, scheduled commands), ``report``/``plots``/``progress`` (output),
``scenarios`` (the registry), ``wire`` (the only user of the generated protobuf code).
"""
