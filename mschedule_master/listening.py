"""The listening clock: how much time the master could not hear, so that no deadline runs
then.

A master that is down, frozen (SIGSTOP, a suspended host), disconnected from its broker or
still draining what the broker queued for its session cannot hear the acks, results and
heartbeats that would prevent a verdict. Deadlines must count only time during which it
listened. This class is pure (time goes in as ``now``): the daemon says when it listens and
when it does not, and gets back how long it was deaf, which the engine then adds to every
running clock (:meth:`~mschedule_master.rollout.Rollout.defer`).

``heard_until`` is persisted: the time up to which the master's time is accounted for
(listened through, or already deferred). After a restart, everything since is deaf time.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A gap this long (seconds) between two passes of the daemon's timer (which runs at least
#: every 0.5 s) means the process was frozen or the wall clock jumped: deaf time.
FREEZE_GAP = 2.0


@dataclass(slots=True)
class ListeningClock:
    heard_until: float  #: time is accounted for up to here
    listening: bool = False  #: False until the daemon has caught up with its broker

    def observe(self, now: float) -> bool:
        """A timer pass at ``now``. False (and deaf from ``heard_until`` on) when the last
        pass was more than FREEZE_GAP ago or in the future: a freeze or a clock jump."""
        if self.listening and not 0 <= now - self.heard_until <= FREEZE_GAP:
            self.listening = False
        return self.listening

    def deaf(self) -> None:
        """The master stopped hearing (disconnected, behind). Time after ``heard_until`` is deaf."""
        self.listening = False

    def heard(self, now: float) -> float:
        """The master listens at ``now`` (connected and caught up). Returns the deaf time
        that just ended (0 while it kept listening): defer every deadline by that much."""
        deaf = 0.0 if self.listening else max(0.0, now - self.heard_until)
        self.listening = True
        self.heard_until = now  # also after a jump back: count on from the clock as it is now
        return deaf
