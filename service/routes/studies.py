"""Studies: create every variant's jobs at once, follow them, read the comparison report;
and the same report for any finished jobs (`/v1/compare`)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError

from analysis.report import (
    effects_csv,
    report,
    variants_csv,
)
from analysis.studies import StudyError, StudySpec, expand
from core.cost import refusals
from jobqueue.accounts import Quota, QuotaExceeded
from jobqueue.models import Study
from jobqueue.reads import Reads
from service.deps import (
    UNFINISHED,
    CallerDep,
    JobIds,
    Limit,
    ListedOwner,
    Offset,
    PagePosition,
    ReadsDep,
    SettingsDep,
    StudiesDep,
    StudyDep,
    compared_variants,
    csv_response,
    get_caller,
    next_link,
    no_unknown_query,
    study_report,
    study_runs,
)
from service.errors import BODY, errors, refused
from service.schemas import IdPrefix, ReportRead, StudyList, StudyRead, StudySummary

log = logging.getLogger("tricklab.service")
router = APIRouter(tags=["studies"], dependencies=[Depends(get_caller), Depends(no_unknown_query)])
Table = Literal["variants", "effects"]
CSV_TABLES = {"variants": variants_csv, "effects": effects_csv}
CSV = {"content": {"text/csv": {"schema": {"type": "string"}}}}


@router.post(
    "/v1/studies",
    name="studies-create",
    status_code=201,
    response_model=StudyRead,
    responses=errors(*BODY, 429),
)
def create_study(
    study: StudySpec,
    studies: StudiesDep,
    reads: ReadsDep,
    settings: SettingsDep,
    caller: CallerDep,
    response: Response,
) -> StudyRead:
    """Queue every variant's jobs, one per seed, and return the study. Variants that resolve
    to the same spec are one variant. `{"preset": "notebook"}` runs the study notebook."""
    try:
        variants = expand(study, settings.max_study_jobs)
    except StudyError as error:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body",), "msg": str(error), "input": None}]
        ) from None
    # Checked before anything is queued: the base spec, then what each variant adds to it.
    found = refusals(study.base, settings) or [
        replace(refusal, message=f"variant {variant.name!r}: {refusal.message}")
        for variant in variants
        for refusal in refusals(variant.spec, settings)
    ]
    if found:
        raise refused(found, within=("base",))
    try:
        row = studies.create(
            caller.name,
            study.name,
            study.model_dump(mode="json"),
            study.seeds,
            [
                (variant.document(), [variant.job_spec(seed) for seed in study.seeds])
                for variant in variants
            ],
            Quota(caller.quota_active_jobs or settings.quota_active_jobs).admit,
        )
    except QuotaExceeded as error:  # refused whole: nothing was queued
        raise HTTPException(429, str(error)) from None
    log.info(
        "study=%s created owner=%s variants=%d seeds=%s",
        row.id,
        caller.name,
        len(variants),
        row.seeds,
    )
    response.headers["Location"] = f"/v1/studies/{row.id}"
    return _read(reads, row)


@router.get(
    "/v1/studies", name="studies-list", response_model=StudyList, responses=errors(403, 422)
)
def list_studies(
    request: Request,
    reads: ReadsDep,
    owner: ListedOwner,
    after: PagePosition,
    id_prefix: IdPrefix = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> StudyList:
    """Your studies, newest first, with their status and progress, optionally only those whose
    id starts with `id_prefix` (what a short id names). An admin sees everyone's, or one
    user's with `owner`. Page on with the `next` link."""
    found, total = reads.list_studies(limit + 1, offset, owner, after, id_prefix)
    studies = found[:limit]
    statuses = reads.statuses([job_id for study in studies for job_id in study.job_ids])
    return StudyList(
        studies=[
            StudySummary.of(study, [statuses[job_id] for job_id in study.job_ids])
            for study in studies
        ],
        total=total,
        limit=limit,
        offset=offset,
        next=next_link(request, found, limit),
    )


@router.get(
    "/v1/studies/{study_id}",
    name="studies-get",
    response_model=StudyRead,
    responses=errors(404, 422),
)
def get_study(study: StudyDep, reads: ReadsDep) -> StudyRead:
    """The study: status, progress, and the report of the runs finished so far."""
    return _read(reads, study)


@router.get(
    "/v1/studies/{study_id}/report",
    name="studies-report",
    response_model=ReportRead,
    responses=errors(404, 422),
)
def get_study_report(study: StudyDep, reads: ReadsDep) -> ReportRead:
    """Per variant, means and 95% intervals over its seeds; per trick, the paired difference
    in test accuracy and a verdict. Finished runs only: it fills in as the jobs end."""
    return study_report(reads, study)


@router.get(
    "/v1/studies/{study_id}/report.csv",
    name="studies-report-csv",
    response_class=Response,
    responses={200: CSV, **errors(404, 422)},
)
def get_study_report_csv(study: StudyDep, reads: ReadsDep, table: Table = "variants") -> Response:
    """The report as CSV: one row per variant, or one per trick (`table=effects`)."""
    return csv_response(
        CSV_TABLES[table](study_report(reads, study)), f"study-{study.id}-{table}.csv"
    )


@router.post(
    "/v1/studies/{study_id}/cancel",
    name="studies-cancel",
    response_model=StudyRead,
    responses=errors(404, 422),
)
def cancel_study(study: StudyDep, studies: StudiesDep, reads: ReadsDep) -> StudyRead:
    """Cancel the study's queued and running jobs; finished runs stay in its report."""
    study = studies.cancel(study.id) or study
    log.info("study=%s cancelled", study.id)
    return _read(reads, study)


@router.get(
    "/v1/compare",
    name="compare",
    response_model=ReportRead,
    responses=errors(400, 404, 422, conflict=UNFINISHED),
)
def compare(reads: ReadsDep, caller: CallerDep, jobs: JobIds) -> ReportRead:
    """The study report for any succeeded jobs: jobs with the same spec but for the seed
    form a variant, and tricks are compared across variants that differ by one trick."""
    return report(compared_variants(reads, jobs, caller))


@router.get(
    "/v1/compare.csv",
    name="compare-csv",
    response_class=Response,
    responses={200: CSV, **errors(400, 404, 422, conflict=UNFINISHED)},
)
def compare_csv(
    reads: ReadsDep, caller: CallerDep, jobs: JobIds, table: Table = "variants"
) -> Response:
    """The comparison as CSV: one row per variant, or one per trick (`table=effects`)."""
    variants = compared_variants(reads, jobs, caller)
    return csv_response(CSV_TABLES[table](report(variants)), f"compare-{table}.csv")


def _read(reads: Reads, study: Study) -> StudyRead:
    variants = study_runs(reads, study)
    summary = StudySummary.of(study, [job.status for v in variants for job in v.jobs])
    return StudyRead(
        **summary.model_dump(),
        request=study.request,
        report=report(variants),
    )
