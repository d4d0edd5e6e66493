from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HeStepRequest(_message.Message):
    __slots__ = ("job_id", "model_version", "stage", "payload")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model_version: int
    stage: str
    payload: bytes
    def __init__(self, job_id: _Optional[str] = ..., model_version: _Optional[int] = ..., stage: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class HeStepReply(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class DeclineRequest(_message.Message):
    __slots__ = ("job_id", "round", "code", "message")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    code: str
    message: str
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SecAggRequest(_message.Message):
    __slots__ = ("job_id", "round", "stage", "payload")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    stage: str
    payload: bytes
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., stage: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class SecAggReply(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class DeviceTraits(_message.Message):
    __slots__ = ("battery", "network", "free_memory_bytes", "dataset_size")
    BATTERY_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    FREE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATASET_SIZE_FIELD_NUMBER: _ClassVar[int]
    battery: float
    network: str
    free_memory_bytes: int
    dataset_size: int
    def __init__(self, battery: _Optional[float] = ..., network: _Optional[str] = ..., free_memory_bytes: _Optional[int] = ..., dataset_size: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("job_id", "device_id", "enrollment_token", "traits")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ENROLLMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TRAITS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    device_id: str
    enrollment_token: str
    traits: DeviceTraits
    def __init__(self, job_id: _Optional[str] = ..., device_id: _Optional[str] = ..., enrollment_token: _Optional[str] = ..., traits: _Optional[_Union[DeviceTraits, _Mapping]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("session_token", "heartbeat_interval_s", "layout_json")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_JSON_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    heartbeat_interval_s: int
    layout_json: str
    def __init__(self, session_token: _Optional[str] = ..., heartbeat_interval_s: _Optional[int] = ..., layout_json: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("job_id", "traits")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TRAITS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    traits: DeviceTraits
    def __init__(self, job_id: _Optional[str] = ..., traits: _Optional[_Union[DeviceTraits, _Mapping]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("task_available", "job_finished")
    TASK_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    JOB_FINISHED_FIELD_NUMBER: _ClassVar[int]
    task_available: bool
    job_finished: bool
    def __init__(self, task_available: bool = ..., job_finished: bool = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("has_task", "round", "model_version", "config_json", "job_finished", "retry_after_ms")
    HAS_TASK_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    JOB_FINISHED_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    has_task: bool
    round: int
    model_version: int
    config_json: str
    job_finished: bool
    retry_after_ms: int
    def __init__(self, has_task: bool = ..., round: _Optional[int] = ..., model_version: _Optional[int] = ..., config_json: _Optional[str] = ..., job_finished: bool = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class DownloadModelRequest(_message.Message):
    __slots__ = ("job_id", "version", "offset", "have_version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    offset: int
    have_version: int
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ..., offset: _Optional[int] = ..., have_version: _Optional[int] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("data", "offset", "total_size", "checksum")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    total_size: int
    checksum: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_size: _Optional[int] = ..., checksum: _Optional[int] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("job_id", "round", "total_size", "checksum", "data", "upload_id", "offset")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    total_size: int
    checksum: int
    data: bytes
    upload_id: str
    offset: int
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., total_size: _Optional[int] = ..., checksum: _Optional[int] = ..., data: _Optional[bytes] = ..., upload_id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class UploadStatusRequest(_message.Message):
    __slots__ = ("job_id", "upload_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    upload_id: str
    def __init__(self, job_id: _Optional[str] = ..., upload_id: _Optional[str] = ...) -> None: ...

class UploadStatusResponse(_message.Message):
    __slots__ = ("known", "received", "total_size")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    known: bool
    received: int
    total_size: int
    def __init__(self, known: bool = ..., received: _Optional[int] = ..., total_size: _Optional[int] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ("accepted", "code", "message")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    code: str
    message: str
    def __init__(self, accepted: bool = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class EvaluationReport(_message.Message):
    __slots__ = ("job_id", "round", "loss", "num_examples", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    loss: float
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., loss: _Optional[float] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
