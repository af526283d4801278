"""Request and response bodies (JSON; the OpenAPI schema at /docs is generated from these).

Types are strict: `k` must be a JSON integer, `filter_known` a boolean; a string "10" is a 422,
not silently coerced.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints, field_validator

from service.settings import MAX_BATCH_LIMIT, Settings

Direction = Literal["tail", "head"]
# An entity or relation as a client names it: an id or an exact name (one constraint for every field).
NameOrId = Annotated[str, StringConstraints(min_length=1, max_length=1000)]


# The settings of the app serving the current request (set by service.middleware.BodyLimit), so
# that list and map sizes are checked against IMF_MAX_BATCH before a single item is validated:
# validating 330,000 invalid items first took half a minute and produced 660,000 errors.
request_limits: ContextVar[Settings | None] = ContextVar("request_limits", default=None)
MAX_NUMERIC_ATTRIBUTES = 1_000  # numeric attributes of one new entity (bundles take tens to hundreds)


def _max_batch() -> int:
    limits = request_limits.get()
    return limits.max_batch if limits is not None else int(Settings.model_fields["max_batch"].default)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(_Strict):
    head: NameOrId = Field(description="entity id or exact name; with direction 'head', the known tail", examples=["Barack Obama"])
    relation: NameOrId = Field(description="relation id or name", examples=["/people/person/nationality"])
    k: StrictInt = Field(10, ge=1, description="number of predictions (at most IMF_MAX_K)")
    direction: Direction = Field("tail", description="'tail': (head, relation, ?); 'head': (?, relation, head)")
    filter_known: StrictBool = Field(True, description="exclude facts already in the KG (false: keep them, flagged known)")


class EntityRef(BaseModel):
    entity: str
    name: str


class RelationRef(BaseModel):
    relation: str
    name: str


class QueryEcho(BaseModel):
    head: EntityRef
    relation: RelationRef
    direction: Direction


class Prediction(BaseModel):
    entity: str
    name: str
    score: float = Field(description="fused decision-fusion probability p = sum_b w_b(r) P_b: P_b is branch b's softmax over all entities (cross-entropy models; scores of all entities sum to 1) or sigmoid(s_b) (BCE models)")
    rank: int
    known: bool = Field(description="the triple is already in the KG (train, valid or test)")
    probability: float | None = Field(None, description="calibrated probability that the triple holds (model.bundle.calibration: fitted on the validation split for triples not yet in the KG); null when the bundle has no calibration")


class PredictResponse(BaseModel):
    model: str = Field(description="model fingerprint (sha256 of the weights)")
    cached: bool
    query: QueryEcho
    predictions: list[Prediction]


class BatchRequest(_Strict):
    queries: list[PredictRequest] = Field(min_length=1, max_length=MAX_BATCH_LIMIT, description="at most IMF_MAX_BATCH queries, scored together")

    @field_validator("queries", mode="before")
    @classmethod
    def _at_most_max_batch(cls, value: object) -> object:
        """Counted before any item is validated (a huge batch costs one len(), not a parse)."""
        if isinstance(value, list) and len(value) > _max_batch():
            raise ValueError(f"at most {_max_batch()} queries per batch (IMF_MAX_BATCH), got {len(value)}")
        return value


class BatchResponse(BaseModel):
    model: str
    results: list[PredictResponse]


class ExplainRequest(_Strict):
    head: NameOrId = Field(examples=["Barack Obama"])
    relation: NameOrId = Field(examples=["/people/person/nationality"])
    direction: Direction = "tail"
    tail: NameOrId | None = Field(None, description="explain only this candidate")
    k: StrictInt = Field(10, ge=1)
    filter_known: StrictBool = True


class BranchPart(BaseModel):
    probability: float = Field(description="the branch's own probability P_b of this candidate: its softmax over all entities (cross-entropy models) or the sigmoid of its logit (BCE models)")
    contribution: float = Field(description="weight x probability; the contributions sum to the score")
    rank: int = Field(description="rank of this candidate among all entities by the branch's own score (unfiltered)")


class ExplainedPrediction(Prediction):
    branches: dict[str, BranchPart]


class ExplainResponse(BaseModel):
    model: str
    query: QueryEcho
    weights: dict[str, float] = Field(description="decision-fusion weight of each branch for this relation; they sum to 1")
    predictions: list[ExplainedPrediction]


class EntityHit(BaseModel):
    entity: str
    name: str
    description: str


class EntitiesResponse(BaseModel):
    entities: list[EntityHit]


class Candidate(BaseModel):
    """One entity (or relation) an ambiguous name may mean: ask again with its id."""

    id: str
    name: str
    description: str = Field(description="the entity's description; empty where there is none")


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None = None
    suggestions: list[str] | None = None
    candidates: list[Candidate] | None = Field(None, description="409 ambiguous_name: every entity (at most 20, most connected first) the name may mean")
    details: list[dict] | None = Field(None, description="the first validation errors (at most 10)")
    errors: int | None = Field(None, description="how many validation errors there were in all")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class NewEntityRequest(_Strict):
    name: str = Field(max_length=100_000, description="the entity's name (required, not blank)", examples=["Ada Lovelace"])
    description: str = Field("", max_length=100_000, description="a sentence or two, encoded with the name like the training entities' texts", examples=["English mathematician and writer, known for her work on the Analytical Engine"])
    numeric: dict[str, float] = Field(default_factory=dict, max_length=MAX_NUMERIC_ATTRIBUTES, description="numeric attributes as in the training data (names from GET /info -> new_entities.numeric_attributes)")
    id: NameOrId | None = Field(None, description="a stable id; generated when omitted")


    @field_validator("numeric", mode="before")
    @classmethod
    def _few_attributes(cls, value: object) -> object:
        """Counted before any value is validated (90,000 keys once cost 1.7 s and a 12 MB 422)."""
        if isinstance(value, dict) and len(value) > MAX_NUMERIC_ATTRIBUTES:
            raise ValueError(f"at most {MAX_NUMERIC_ATTRIBUTES} numeric attributes, got {len(value)}")
        return value


class NewEntityResponse(BaseModel):
    entity: str
    name: str
    description: str
    added: int = Field(description="entities added so far to this model")


class ScoreRequest(_Strict):
    head: NameOrId = Field(examples=["Barack Obama"])
    relation: NameOrId = Field(examples=["/people/person/nationality"])
    tail: NameOrId = Field(examples=["United States of America"])


class ScoreResponse(BaseModel):
    model: str
    head: EntityRef
    relation: RelationRef
    tail: EntityRef
    score: float = Field(description="fused decision-fusion probability of the tail among all entities")
    probability: float | None = Field(description="calibrated probability that the triple holds; null without a calibration")
    rank: int = Field(description="the tail's rank among all entities for (head, relation, ?), known answers left in")
    known: bool
    weights: dict[str, float]
    branches: dict[str, BranchPart]
