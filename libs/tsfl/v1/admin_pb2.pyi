from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListJobsRequest(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: str
    def __init__(self, status: _Optional[str] = ...) -> None: ...

class JobList(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec_yaml", "enrollment_token")
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    ENROLLMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    spec_yaml: str
    enrollment_token: str
    def __init__(self, spec_yaml: _Optional[str] = ..., enrollment_token: _Optional[str] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("job_id", "name", "status", "reason", "rounds_total", "rounds_done", "model_version", "spec_yaml", "enrollment_token", "devices", "layout_json", "test_accuracy", "test_loss")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_DONE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    ENROLLMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_JSON_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TEST_LOSS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    status: str
    reason: str
    rounds_total: int
    rounds_done: int
    model_version: int
    spec_yaml: str
    enrollment_token: str
    devices: int
    layout_json: str
    test_accuracy: float
    test_loss: float
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., rounds_total: _Optional[int] = ..., rounds_done: _Optional[int] = ..., model_version: _Optional[int] = ..., spec_yaml: _Optional[str] = ..., enrollment_token: _Optional[str] = ..., devices: _Optional[int] = ..., layout_json: _Optional[str] = ..., test_accuracy: _Optional[float] = ..., test_loss: _Optional[float] = ...) -> None: ...

class RoundInfo(_message.Message):
    __slots__ = ("round", "state", "reason", "accepted", "rejected", "cohort_size", "model_version", "job_status", "test_accuracy", "test_loss", "train_loss", "epsilon", "bytes_up", "bytes_down")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    COHORT_SIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    JOB_STATUS_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TEST_LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    round: int
    state: str
    reason: str
    accepted: int
    rejected: int
    cohort_size: int
    model_version: int
    job_status: str
    test_accuracy: float
    test_loss: float
    train_loss: float
    epsilon: float
    bytes_up: int
    bytes_down: int
    def __init__(self, round: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., accepted: _Optional[int] = ..., rejected: _Optional[int] = ..., cohort_size: _Optional[int] = ..., model_version: _Optional[int] = ..., job_status: _Optional[str] = ..., test_accuracy: _Optional[float] = ..., test_loss: _Optional[float] = ..., train_loss: _Optional[float] = ..., epsilon: _Optional[float] = ..., bytes_up: _Optional[int] = ..., bytes_down: _Optional[int] = ...) -> None: ...

class RoundList(_message.Message):
    __slots__ = ("rounds",)
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[RoundInfo]
    def __init__(self, rounds: _Optional[_Iterable[_Union[RoundInfo, _Mapping]]] = ...) -> None: ...

class ParticipantsRequest(_message.Message):
    __slots__ = ("job_id", "round")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class Participant(_message.Message):
    __slots__ = ("round", "client_id", "status", "reason", "num_examples", "bytes_up")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    round: int
    client_id: str
    status: str
    reason: str
    num_examples: int
    bytes_up: int
    def __init__(self, round: _Optional[int] = ..., client_id: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., num_examples: _Optional[int] = ..., bytes_up: _Optional[int] = ...) -> None: ...

class ParticipantList(_message.Message):
    __slots__ = ("participants",)
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    participants: _containers.RepeatedCompositeFieldContainer[Participant]
    def __init__(self, participants: _Optional[_Iterable[_Union[Participant, _Mapping]]] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("seq", "kind", "actor", "payload_json", "created_at", "hash", "prev_hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: str
    actor: str
    payload_json: str
    created_at: str
    hash: str
    prev_hash: str
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[str] = ..., actor: _Optional[str] = ..., payload_json: _Optional[str] = ..., created_at: _Optional[str] = ..., hash: _Optional[str] = ..., prev_hash: _Optional[str] = ...) -> None: ...

class AuditTrail(_message.Message):
    __slots__ = ("events", "chain_valid", "chain_detail")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    CHAIN_VALID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_DETAIL_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    chain_valid: bool
    chain_detail: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., chain_valid: bool = ..., chain_detail: _Optional[str] = ...) -> None: ...
