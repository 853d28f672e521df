"""mschedule's benchmarks: ``python -m bench`` (``make bench``) measures the product on this
machine against baselines taken in the same run (process spawn rate, a bare MQTT round trip)
and writes ``bench/results/latest.json`` and ``latest.md``. Not part of the installed package."""
