"""The watch routes (/v1/watches: create, list, get, remove, scan now, timeline) and the circuit diff
(/v1/circuits/{a}/diff/{b}). Mounted by service.api.create_app with the app's own token check."""

# no `from __future__ import annotations`: FastAPI resolves the route annotations at runtime

from typing import Annotated

from fastapi import APIRouter, Query

from discovery.io.diff import CircuitDiff, diff_circuits

from ..watches import schemas as ws
from ..watches import store as watch_store
from ..watches.scheduler import tick


def watch_router(db, queue, settings, Owner, responses: dict) -> APIRouter:
    """The routes, closed over the app's store, queue, settings and `Owner` (the bearer-token dependency)."""
    router = APIRouter(responses=responses)

    @router.post("/v1/watches", status_code=201, response_model=ws.Watch, tags=["watches"])
    def create_watch(body: ws.WatchRequest, who: Owner):
        """Watch a checkpoint source: each scan queues one job per task for every new complete checkpoint.
        The first scan is due at once."""
        row = watch_store.create_watch(db, settings, body, who[0])
        return watch_store.watch_view(db, row)

    @router.get("/v1/watches", response_model=ws.WatchList, tags=["watches"])
    def list_watches(who: Owner):
        return ws.WatchList(items=[watch_store.watch_view(db, w) for w in watch_store.list_watches(db, who.scope)])

    @router.get("/v1/watches/{watch_id}", response_model=ws.Watch, tags=["watches"])
    def get_watch(watch_id: str, who: Owner):
        """The watch with every checkpoint it queued, its job's status and, for a failed one, the error."""
        return watch_store.watch_view(db, watch_store.get_watch(db, watch_id, who.scope), with_checkpoints=True)

    @router.delete("/v1/watches/{watch_id}", response_model=ws.Watch, tags=["watches"])
    def remove_watch(watch_id: str, who: Owner):
        """Stop watching; the jobs and circuits it made stay."""
        row = watch_store.get_watch(db, watch_id, who.scope)
        view = watch_store.watch_view(db, row)
        watch_store.remove_watch(db, watch_id, who.scope)
        return view

    @router.post("/v1/watches/{watch_id}/run", response_model=ws.TickReport, tags=["watches"])
    def run_now(watch_id: str, who: Owner):
        """Scan now, outside the schedule; the answer says what was queued and what is still being written."""
        watch = watch_store.get_watch(db, watch_id, who.scope)
        return ws.TickReport.model_validate(tick(db, queue, settings, watch).as_dict())

    @router.get("/v1/watches/{watch_id}/timeline", response_model=ws.WatchTimeline, tags=["watches"])
    def timeline(watch_id: str, who: Owner):
        """Per task: the circuit at each checkpoint in training order, its size, faithfulness and the
        components that entered or left; failed checkpoints with their errors."""
        watch_store.get_watch(db, watch_id, who.scope)  # another owner's watch: not found
        return watch_store.watch_timeline(db, watch_id)

    @router.get("/v1/circuits/{a}/diff/{b}", response_model=CircuitDiff, tags=["circuits"])
    def diff(a: str, b: str, who: Owner,
             top: Annotated[int, Query(ge=0, le=1_000_000, description="score changes listed (largest first)")] = 50):
        """Circuit B against circuit A: edges gained and lost, score changes, edge Jaccard, nodes gained
        and lost, components whose label or role tags changed, and the faithfulness of each."""
        return diff_circuits(watch_store.load_circuit(db, a, who.scope), watch_store.load_circuit(db, b, who.scope),
                             top=top)

    return router
