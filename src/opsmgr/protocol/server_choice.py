"""Which management server an agent (or a gateway) dials next and how long it waits first (pure).

Operations Manager's rule: retry the primary 3 times, then fail over; while on a failover, retry the primary every
60 s and fail back. Waits grow exponentially with jitter (OpenTelemetry's 5 s initial, x1.5, 30 s cap), so a
thousand agents that lost the same server do not return to it in the same second.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

DEFAULT_PRIMARY_ATTEMPTS = 3
DEFAULT_FAILBACK_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial_seconds: float = 5.0
    max_seconds: float = 30.0
    multiplier: float = 1.5
    jitter: float = 0.5  # each wait is drawn from base x [1 - jitter, 1 + jitter], then capped

    def delay(self, failures: int, random: float) -> float:
        """The wait after `failures` consecutive failures (>= 1); `random` is uniform in [0, 1)."""
        base = min(self.max_seconds, self.initial_seconds * self.multiplier ** max(0, failures - 1))
        return min(self.max_seconds, base * (1 - self.jitter + 2 * self.jitter * random))


@dataclass(frozen=True, slots=True)
class NextAttempt:
    server: str
    delay_seconds: float


@dataclass(frozen=True, slots=True)
class ServerChoice:
    """Where the agent is in its server list; every method returns the next state, nothing is changed in place."""

    primary: str
    failovers: tuple[str, ...] = ()
    current: str = ""
    primary_failures: int = 0
    consecutive_failures: int = 0
    primary_attempts: int = DEFAULT_PRIMARY_ATTEMPTS

    def __post_init__(self) -> None:
        if not self.current:
            object.__setattr__(self, "current", self.primary)

    @property
    def on_primary(self) -> bool:
        return self.current == self.primary

    def connected(self) -> ServerChoice:
        return replace(self, primary_failures=0 if self.on_primary else self.primary_failures,
                       consecutive_failures=0)

    def failed(self, backoff: BackoffPolicy, random: float) -> tuple[ServerChoice, NextAttempt]:
        """After a failed attempt (or a lost stream) on `current`: where to try next, and after how long."""
        failures = self.consecutive_failures + 1
        if self.on_primary:
            primary_failures = self.primary_failures + 1
            if primary_failures >= self.primary_attempts and self.failovers:
                # Failing over is the point of having failovers: try the first one at once.
                state = replace(self, current=self.failovers[0], primary_failures=primary_failures,
                                consecutive_failures=failures)
                return state, NextAttempt(state.current, 0.0)
            state = replace(self, primary_failures=primary_failures, consecutive_failures=failures)
            return state, NextAttempt(self.primary, backoff.delay(failures, random))
        index = self.failovers.index(self.current) if self.current in self.failovers else len(self.failovers)
        # After the last failover the primary gets its attempts again.
        following = self.failovers[index + 1] if index + 1 < len(self.failovers) else self.primary
        state = replace(self, current=following, consecutive_failures=failures,
                        primary_failures=0 if following == self.primary else self.primary_failures)
        return state, NextAttempt(following, backoff.delay(failures, random))

    def fail_back(self) -> ServerChoice:
        """The primary answered a probe while on a failover: go back to it."""
        return replace(self, current=self.primary, primary_failures=0)

    def redirected(self, server: str, failovers: tuple[str, ...] = ()) -> ServerChoice:
        """The server said to use `server` instead: it becomes the primary for this run."""
        return replace(self, primary=server, current=server, failovers=failovers or self.failovers,
                       primary_failures=0, consecutive_failures=0)

    def with_failovers(self, failovers: tuple[str, ...]) -> ServerChoice:
        """The failover list a Welcome or ConfigUpdate assigns; an empty list keeps the configured one."""
        if not failovers:
            return self
        kept = tuple(server for server in failovers if server != self.primary)
        return replace(self, failovers=kept)
