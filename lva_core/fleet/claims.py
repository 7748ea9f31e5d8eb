"""Claims of streams by agents, and the writes fenced by them, as statements on the shared store.

A stream **wants to run** when its status is active (pending, in_progress, restart: what the
user asked for and what its last owner reached). It **has an owner** when ``owner_id`` and
``owner_incarnation`` name an agent whose lease is alive (alive or draining). A stream that wants
to run and has no owner is **claimable**.

**One statement claims one stream** (``CLAIM``): the oldest claimable stream whose analytics the
agent can all run, while the agent is under its capacity, locked ``FOR UPDATE SKIP LOCKED`` so
that agents claiming at the same moment never wait for each other nor take the same row, and
only when no capable agent under its capacity is less loaded than this one (load: streams owned
÷ capacity, ties to the smaller ``agent_id``): LUNA's "percent" placement. An agent claims in a
loop until the statement returns nothing; in turn the agents fill up evenly.

**Every status write of a worker is fenced** (``WRITE_STATUS``): it names the owner's agent and
incarnation, and changes no row once the stream was taken by another agent, paused, or deleted.
No row changed means the stream was lost: its worker stops at once.

The user's own writes (pause, resume, retry, delete) come from any core and need no owner: each
raises the stream's ``generation`` and keeps the owner, whose next fenced write fails and whose
next round stops the worker, or starts it again for a resume. While the owner lives nobody else
may claim the stream, so a camera never has two readers; a stream paused or resumed while its
owner is dead is claimable by any agent. An agent's load counts the streams it owns that want to
run. A drained agent releases its streams (``RELEASE``) for others to claim at once.

These are the statements only; who runs them, when and on which connection is the agent's
business. They are written against the schema of streams/store/postgresql.py (version 3).
"""

from __future__ import annotations

import asyncpg

ACTIVE = ("pending", "in_progress", "restart")

# $1 agent_id, $2 incarnation, $3 the wall-clock time of the change (last_update_time).
CLAIM = """
WITH me AS (
    SELECT agent_id, incarnation, capacity, analytics FROM agents
    WHERE agent_id = $1 AND incarnation = $2 AND status = 'alive' AND lease_expires > now()
),
holders AS (
    SELECT agent_id, incarnation FROM agents
    WHERE status IN ('alive', 'draining') AND lease_expires > now()
),
placers AS (
    SELECT a.agent_id, a.capacity, a.analytics,
           (SELECT count(*) FROM streams o
            WHERE o.owner_id = a.agent_id AND o.owner_incarnation = a.incarnation) AS load
    FROM agents a WHERE a.status = 'alive' AND a.lease_expires > now()
),
pick AS (
    SELECT s.stream_id, s.owner_id AS previous_owner FROM streams s, me, placers mine
    WHERE mine.agent_id = me.agent_id
      AND mine.load < me.capacity
      AND s.status IN ('pending', 'in_progress', 'restart')
      AND s.analytic_names <@ me.analytics
      AND NOT EXISTS (
          SELECT 1 FROM holders h WHERE h.agent_id = s.owner_id AND h.incarnation = s.owner_incarnation
      )
      AND NOT EXISTS (
          SELECT 1 FROM placers other
          WHERE other.agent_id <> me.agent_id
            AND other.load < other.capacity
            AND s.analytic_names <@ other.analytics
            AND (other.load::float8 / other.capacity, other.agent_id)
                < (mine.load::float8 / me.capacity, me.agent_id)
      )
    ORDER BY s.position
    LIMIT 1
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE streams s
SET owner_id = $1, owner_incarnation = $2, status = 'pending', last_update_time = $3
FROM pick WHERE s.stream_id = pick.stream_id
RETURNING s.stream_id, pick.previous_owner
"""

# $1 status, $2 error, $3 last_update_time, $4 stream_id, $5 agent_id, $6 incarnation,
# $7 the generation the worker runs.
WRITE_STATUS = """
UPDATE streams SET status = $1, error = $2, last_update_time = $3
WHERE stream_id = $4 AND owner_id = $5 AND owner_incarnation = $6 AND generation = $7
"""

# $1 agent_id, $2 incarnation: what the agent's rounds compare with the workers they run.
OWNED_STATE = """
SELECT stream_id, status, generation FROM streams
WHERE owner_id = $1 AND owner_incarnation = $2 ORDER BY position
"""

# $1 agent_id, $2 incarnation, $3 stream ids: give these back (over capacity, without a worker).
RELEASE_SOME = """
UPDATE streams SET owner_id = NULL, owner_incarnation = NULL
WHERE owner_id = $1 AND owner_incarnation = $2 AND stream_id = ANY($3)
"""

# $1 agent_id, $2 incarnation: give every stream back (SIGTERM); their status stays what it was.
RELEASE = """
UPDATE streams SET owner_id = NULL, owner_incarnation = NULL
WHERE owner_id = $1 AND owner_incarnation = $2
"""


async def claim_taking_over(
    db: asyncpg.Connection, agent_id: str, incarnation: int, now: float, limit: int
) -> list[tuple[str, str | None]]:
    """Claim until nothing is left for this agent (or ``limit`` streams, for one round); each
    stream with the agent that owned it before (None: a new stream, or one paused or released),
    so that takeovers from dead agents can be counted."""
    claimed: list[tuple[str, str | None]] = []
    while len(claimed) < limit:
        row = await db.fetchrow(CLAIM, agent_id, incarnation, now)
        if row is None:
            break
        claimed.append((str(row["stream_id"]), row["previous_owner"]))
    return claimed


async def claim_all(
    db: asyncpg.Connection, agent_id: str, incarnation: int, now: float, limit: int = 1000
) -> list[str]:
    """The ids claim_taking_over claims."""
    return [stream_id for stream_id, _ in await claim_taking_over(db, agent_id, incarnation, now, limit)]


async def write_status(
    db: asyncpg.Connection,
    agent_id: str,
    incarnation: int,
    stream_id: str,
    status: str,
    error: str | None,
    now: float,
    generation: int = 0,
) -> bool:
    """A worker's status, written only while this incarnation owns the stream at the generation
    it runs; False: lost (taken over, or changed by the user)."""
    result = await db.execute(WRITE_STATUS, status, error, now, stream_id, agent_id, incarnation, generation)
    return not result.endswith(" 0")


async def owned(db: asyncpg.Connection, agent_id: str, incarnation: int) -> list[str]:
    return [str(r["stream_id"]) for r in await db.fetch(OWNED_STATE, agent_id, incarnation)]


async def release(db: asyncpg.Connection, agent_id: str, incarnation: int) -> int:
    """Give every stream of this incarnation back; how many."""
    result = await db.execute(RELEASE, agent_id, incarnation)
    return int(result.rsplit(" ", 1)[1])
