"""Node settings: environment variables, overridden by command-line flags, with zero-config
defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, BeforeValidator, Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from p2pnode import DEFAULT_DATA
from p2pnode.executors.base import (
    COMPILE_CACHE_BYTES,
    DEFAULT_MAXIMA,
    MAX_COMPILE_S,
    MIB,
    JobMaxima,
)
from p2pnode.labels import Labels, labels_from_env


class Settings(BaseSettings):
    """Everything a node needs to start. Each field reads the environment variable in its alias."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore")

    data_dir: Path = Field(DEFAULT_DATA, validation_alias=AliasChoices("data_dir", "P2PNODE_DATA"))
    blobs_path: Path | None = Field(
        None, validation_alias=AliasChoices("blobs_path", "IROH_BLOBS_PATH")
    )
    http_host: str = Field("127.0.0.1", validation_alias=AliasChoices("http_host", "HTTP_HOST"))
    http_port: int = Field(
        3020, ge=0, le=65535, validation_alias=AliasChoices("http_port", "HTTP_PORT")
    )
    bind: str = Field("0.0.0.0:0", validation_alias=AliasChoices("bind", "P2PNODE_BIND"))
    relay: str = Field("default", validation_alias=AliasChoices("relay", "P2PNODE_RELAY"))
    flawless_url: str = Field(
        "http://localhost:27288", validation_alias=AliasChoices("flawless_url", "FLAWLESS_URL")
    )
    flawless_token: str | None = Field(
        None, validation_alias=AliasChoices("flawless_token", "FLAWLESS_TOKEN")
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, validation_alias=AliasChoices("connect_timeout_s", "P2PNODE_CONNECT_TIMEOUT")
    )
    lease_s: float = Field(15.0, gt=0, validation_alias=AliasChoices("lease_s", "P2PNODE_LEASE"))
    max_jobs: int = Field(2, ge=0, validation_alias=AliasChoices("max_jobs", "P2PNODE_MAX_JOBS"))
    # The most any job gets here, whatever it asks; defaults from JobMaxima.
    max_job_memory_mib: int = Field(
        DEFAULT_MAXIMA.memory_bytes // MIB,
        ge=1,
        validation_alias=AliasChoices("max_job_memory_mib", "P2PNODE_MAX_JOB_MEMORY_MIB"),
    )
    max_job_time_s: float = Field(
        DEFAULT_MAXIMA.time_s,
        gt=0,
        allow_inf_nan=False,
        validation_alias=AliasChoices("max_job_time_s", "P2PNODE_MAX_JOB_TIME"),
    )
    max_job_fuel: int = Field(
        DEFAULT_MAXIMA.fuel,
        ge=1,
        lt=1 << 64,
        validation_alias=AliasChoices("max_job_fuel", "P2PNODE_MAX_JOB_FUEL"),
    )
    max_job_output_mib: int = Field(
        DEFAULT_MAXIMA.output_bytes // MIB,
        ge=0,
        validation_alias=AliasChoices("max_job_output_mib", "P2PNODE_MAX_JOB_OUTPUT_MIB"),
    )
    # Placement: what this node says it is (jobs `--require` them); k=v,k2=v2 in the environment.
    labels: Annotated[Labels, NoDecode, BeforeValidator(labels_from_env)] = Field(
        {}, validation_alias=AliasChoices("labels", "P2PNODE_LABELS")
    )

    # Embedded runner: compile time limit and compile cache size (issue 11).
    max_compile_s: float = Field(
        MAX_COMPILE_S,
        gt=0,
        allow_inf_nan=False,
        validation_alias=AliasChoices("max_compile_s", "P2PNODE_MAX_COMPILE_TIME"),
    )
    compile_cache_mib: int = Field(
        COMPILE_CACHE_BYTES // MIB,
        ge=0,
        validation_alias=AliasChoices("compile_cache_mib", "P2PNODE_COMPILE_CACHE_MIB"),
    )

    # Retention: finished jobs (and the blobs only they hold) are removed this many days after
    # they finished; 0 keeps them forever.
    job_retention_days: float = Field(
        7.0,
        ge=0,
        allow_inf_nan=False,
        validation_alias=AliasChoices("job_retention_days", "P2PNODE_JOB_RETENTION"),
    )

    @property
    def blobs_dir(self) -> Path:
        return self.blobs_path if self.blobs_path is not None else self.data_dir / "iroh-blobs"

    @property
    def job_maxima(self) -> JobMaxima:
        return JobMaxima(
            time_s=self.max_job_time_s,
            memory_bytes=self.max_job_memory_mib * MIB,
            fuel=self.max_job_fuel,
            output_bytes=self.max_job_output_mib * MIB,
        )
