"""Development tooling shared by the tests, `make demo` and `make bench`: starts real
mosquitto brokers from the project's configs and real mschedule daemons as processes.
Not part of the installed package."""
