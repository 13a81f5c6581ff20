"""`POST /v1/train` (a training job from a form), `GET /v1/train[/{id}]`, `DELETE /v1/train/{id}`.

The form is read with a bound (LPT_MAX_TRAIN_BYTES) and checked as `lpt train` checks its
arguments and data, in a thread, before a job is queued: bad data is a 400 and no job. The job
runs in a child process (train_jobs.py); these routes only read and change job records.
"""
from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse

from ..auth import require_admin_key
from ..body import stream_into
from ..paths import NO_CONTROL_PATTERN
from ..runtime import started
from ..schemas import ErrorResponse, TrainJobList, TrainJobView
from ..train_form import FORM_SCHEMA, TrainFormReader, prepare_job

router = APIRouter(prefix="/v1/train", tags=["training"], dependencies=[Depends(require_admin_key)])

JobId = Annotated[str, Path(description="the job's id, as POST /v1/train answered it",
                            json_schema_extra={"pattern": NO_CONTROL_PATTERN})]


def _errors(*codes: int) -> dict:
    return {c: {"model": ErrorResponse} for c in (401, 403, *codes)}


@router.post("", status_code=202, response_model=TrainJobView,
             responses=_errors(400, 408, 413, 415, 429),
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
                 "schema": FORM_SCHEMA}}}},
             summary="Train an adapter: a job from a labelled file, run beside serving")
async def start_training(request: Request):
    """The form holds the data file and `lpt train`'s options (`text_column` for
    `--text-column`, ...). Answers 202 with the job at once; follow it with GET /v1/train/{id}.
    On success the adapter is stored and served under `task` as if uploaded.

    `curl -F task=my-task -F data=@train.csv -F epochs=2 -H "Authorization: Bearer $LPT_ADMIN_KEY" URL/v1/train`"""
    rt = started(request)
    limit = rt.settings.max_train_bytes
    reader = TrainFormReader(request.headers.get("content-type", ""), limit)     # UploadError: 400
    rt.trainer.check_room()                 # a full queue refuses before the upload is read
    form = await stream_into(request, reader, limit=limit, body_limit=reader.body_limit(),
                             setting="LPT_MAX_TRAIN_BYTES", timeout_s=rt.settings.body_timeout_s,
                             what="training upload")
    job = await asyncio.to_thread(prepare_job, form, rt.train_runner, rt.engine.backbone,   # FormError: 400
                                  rt.settings.max_adapter_bytes)
    try:
        view = rt.trainer.submit(job)
    except BaseException:
        await asyncio.to_thread(job.discard)
        raise
    return JSONResponse(view, status_code=202)


@router.get("", response_model=TrainJobList, responses=_errors(), summary="List the training jobs, newest first")
def list_training(request: Request):
    # A plain def (FastAPI's thread pool): up to 100 kept jobs with their histories and metrics
    # took 80-420 ms to list and check.
    return {"jobs": started(request).trainer.list()}


@router.get("/{job_id}", response_model=TrainJobView, responses=_errors(400, 404), summary="One training job")
async def get_training(job_id: JobId, request: Request):
    return started(request).trainer.get(job_id)


@router.delete("/{job_id}", response_model=TrainJobView, responses=_errors(400, 404, 409),
               summary="Cancel a training job (a queued one is dropped, a running one stops at its next step)")
async def cancel_training(job_id: JobId, request: Request):
    """200 with the job, now `cancelled`; 409 if it has ended already."""
    return await asyncio.to_thread(started(request).trainer.cancel, job_id)
