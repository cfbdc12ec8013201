"""Job specs and the trick catalogue: every name, parameter, default and limit in one place.

A trick is written as its name (`"dropout"`) or as an object with its name and parameters
(`{"name": "weight_decay", "l2": 0.001}`). A validated JobSpec is always fully resolved: the
learning rate is filled in and the tricks are in catalogue order with every parameter set (a
parameter not given takes its architecture's default), so two specs that train the same model
compare equal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)

DATASET_CLASSES: dict[str, tuple[str, ...]] = {
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "mnist": tuple(str(digit) for digit in range(10)),
}
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
# The largest seed: a positive 32-bit integer, which every backend's seeded generators take.
MAX_SEED = 2**31 - 1

# The notebook's learning rates: Adam's Keras default, and plain SGD's usual starting point.
ADAM_LEARNING_RATE = 0.001
SGD_LEARNING_RATE = 0.01


def _not_a_boolean(value: Any) -> Any:
    # Python's True is 1, so pydantic would take true for 1; JSON's booleans are no numbers.
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {str(value).lower()}")
    return value


# After any constraints in a type's metadata, or the JSON schema loses them.
NOT_A_BOOLEAN = BeforeValidator(_not_a_boolean)
Integer = Annotated[int, NOT_A_BOOLEAN]
Number = Annotated[float, NOT_A_BOOLEAN]


class Strict(BaseModel):
    """Rejects unknown fields with a message that lists the allowed ones, and NaN/inf."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _name_unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [key for key in data if key not in cls.model_fields]
            if unknown:
                names = ", ".join(repr(str(key)) for key in unknown)
                allowed = ", ".join(cls.model_fields)
                raise ValueError(f"unknown field {names}; allowed fields: {allowed}")
        return data


class Dropout(Strict):
    """Zeroes a random fraction of each hidden layer's outputs at every training step, so no
    unit can rely on another; inactive at evaluation and prediction. On the CNN: after each
    conv block (after its pooling) and after each dense layer of the head."""

    name: Literal["dropout"] = "dropout"
    rate: Number = Field(
        0.1,
        gt=0,
        lt=1,
        description="Fraction of units dropped (notebook: 0.5; the default is chosen on "
        "validation).",
    )
    spatial: StrictBool = Field(
        False,
        description="CNN only: after a conv block, drop whole feature maps (every position "
        "of a channel at once) instead of single values; the dense head keeps plain dropout.",
    )


class WeightDecay(Strict):
    """L2 penalty on the kernels and biases of the hidden Dense layers (on the CNN: of every
    conv layer and every dense layer of the head; as on the MLP, not the output layer), added
    to the loss that training minimises; pulls weights towards zero. Each epoch's
    train_objective includes it; train_loss and the other losses are the plain cross-entropy,
    comparable across tricks."""

    name: Literal["weight_decay"] = "weight_decay"
    l2: Number = Field(
        0.001,
        gt=0,
        le=1,
        description="Penalty factor: l2 * sum(w²) (notebook: 0.01; the default is chosen on "
        "validation).",
    )


class BatchNorm(Strict):
    """Normalises each hidden layer's pre-activations over the batch: Dense (no activation) →
    BatchNormalization → ReLU, before any dropout. On the CNN: Conv2D (no activation) →
    BatchNormalization (per channel) → ReLU → pooling in each block, and likewise in the dense
    head. Steadier, faster optimisation."""

    name: Literal["batch_norm"] = "batch_norm"
    momentum: Number = Field(
        0.99, gt=0, lt=1, description="Momentum of the moving mean and variance used at inference."
    )


class EarlyStopping(Strict):
    """Watches the validation loss, stops when it has not improved for `patience` epochs and
    restores the weights of the best epoch; the job records best_epoch and stopped_epoch. The
    same on every architecture."""

    name: Literal["early_stopping"] = "early_stopping"
    patience: Integer = Field(
        3, ge=1, le=100, description="Epochs without improvement before stopping."
    )
    min_delta: Number = Field(
        0.0,
        ge=0,
        le=1,
        description="Smallest decrease of validation loss that counts as improvement.",
    )


class Momentum(Strict):
    """Replaces Adam by SGD with (Nesterov) momentum; the learning rate defaults to 0.01. The
    same on every architecture."""

    name: Literal["momentum"] = "momentum"
    momentum: Number = Field(0.9, gt=0, lt=1, description="Velocity decay factor.")
    nesterov: StrictBool = Field(True, description="Use Nesterov's look-ahead gradient.")


class LabelSmoothing(Strict):
    """Trains against softened targets (1 - amount on the true class, the rest spread evenly),
    discouraging over-confident predictions. The same on every architecture."""

    name: Literal["label_smoothing"] = "label_smoothing"
    amount: Number = Field(
        0.1, gt=0, lt=1, description="Probability mass moved off the true class."
    )


class CosineDecay(Strict):
    """Lowers the learning rate along a half cosine, step by step, from its initial value to
    `final_fraction` of it at the last epoch. The same on every architecture."""

    name: Literal["cosine_decay"] = "cosine_decay"
    final_fraction: Number = Field(
        0.0, ge=0, lt=1, description="Final learning rate as a fraction of the initial one."
    )


class Augmentation(Strict):
    """Random shifts (and horizontal flips) of each training image, a new draw every step;
    inactive at evaluation and prediction. The same on every architecture: the images change
    before the model's first layer."""

    name: Literal["augmentation"] = "augmentation"
    shift: Number = Field(
        0.1,
        ge=0,
        le=0.5,
        description="Largest shift, as a fraction of the image's height and width.",
    )
    flip: StrictBool = Field(True, description="Mirror half of the images left to right.")

    @model_validator(mode="after")
    def _does_something(self) -> Augmentation:
        if self.shift == 0 and not self.flip:
            raise ValueError("augmentation with shift 0 and flip false changes nothing")
        return self


# Catalogue order is the canonical order of a resolved spec's tricks.
TRICK_TYPES: tuple[type[Strict], ...] = (
    Dropout,
    WeightDecay,
    BatchNorm,
    EarlyStopping,
    Momentum,
    LabelSmoothing,
    CosineDecay,
    Augmentation,
)
TRICKS: dict[str, type[Strict]] = {t.model_fields["name"].default: t for t in TRICK_TYPES}
TrickName = Literal[
    "dropout",
    "weight_decay",
    "batch_norm",
    "early_stopping",
    "momentum",
    "label_smoothing",
    "cosine_decay",
    "augmentation",
]
AnyTrick = Annotated[
    Dropout
    | WeightDecay
    | BatchNorm
    | EarlyStopping
    | Momentum
    | LabelSmoothing
    | CosineDecay
    | Augmentation,
    Field(discriminator="name"),
]
TrickT = TypeVar("TrickT", bound=Strict)

Architecture = Literal["mlp", "cnn"]
# Trick name → parameter → its default on that architecture, where it differs from the trick
# class's own. The defaults that may depend on the layers (dropout's rate, weight decay's l2)
# are chosen per architecture on validation by `make defaults` (docs/defaults/results.md);
# where both architectures chose the same value, it is the class's default.
ARCHITECTURE_DEFAULTS: dict[Architecture, dict[str, dict[str, Any]]] = {"mlp": {}, "cnn": {}}
# The spec fields that shape each architecture's model; null on the other architecture.
SHAPE_FIELDS: dict[str, tuple[str, ...]] = {
    "mlp": ("hidden_units",),
    "cnn": ("conv_filters", "kernel_size", "dense_units"),
}


def trick_defaults(name: str, architecture: Architecture) -> dict[str, Any]:
    """Every parameter of the trick (and its name) at its default on the architecture."""
    own = TRICKS[name]().model_dump()
    return {**own, **ARCHITECTURE_DEFAULTS[architecture].get(name, {})}


def _at_architecture_defaults(trick: TrickT, architecture: Architecture) -> TrickT:
    """The trick with each parameter the client did not give at the architecture's default;
    validated anew, so that every parameter is set and the resolved spec round-trips."""
    kind = type(trick)
    defaults = trick_defaults(kind.model_fields["name"].default, architecture)
    return kind.model_validate({**defaults, **trick.model_dump(exclude_unset=True)})


def _name_to_object(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


TrickItem = Annotated[
    AnyTrick, BeforeValidator(_name_to_object, json_schema_input_type=TrickName | AnyTrick)
]


class JobSpec(Strict):
    """What to train. Every field is optional; defaults reproduce the notebook's base model."""

    model_config = ConfigDict(
        frozen=False,
        json_schema_extra={
            "examples": [
                {
                    "dataset": "fashion_mnist",
                    "tricks": ["dropout", {"name": "weight_decay", "l2": 0.001}],
                    "epochs": 20,
                    "batch_size": 32,
                    "seed": 0,
                }
            ]
        },
    )

    dataset: Literal["fashion_mnist", "mnist"] = "fashion_mnist"
    architecture: Architecture = Field(
        "mlp",
        description="mlp: the notebook's perceptron, shaped by hidden_units. cnn: a small "
        "convolutional net, conv blocks then a dense head, shaped by conv_filters, "
        "kernel_size and dense_units. Each architecture's shape fields are null on the other.",
    )
    tricks: list[TrickItem] = Field(
        default_factory=list, max_length=len(TRICK_TYPES), description="Tricks to apply."
    )
    epochs: Integer = Field(10, ge=1, le=1000, description="Epochs to train (notebook: 10).")
    batch_size: Integer = Field(32, ge=1, le=8192, description="Images per step (notebook: 32).")
    learning_rate: Annotated[float, Field(gt=0, le=10), NOT_A_BOOLEAN] | None = Field(
        None, description="null: 0.001 for Adam, 0.01 with the momentum trick."
    )
    validation_size: Integer = Field(
        10_000,
        ge=0,
        le=50_000,
        description="Training images held out, from the front of the set (0: no validation).",
    )
    hidden_units: list[Annotated[int, Field(ge=1, le=4096), NOT_A_BOOLEAN]] | None = Field(
        None,
        min_length=1,
        max_length=8,
        description="mlp only. Width of each hidden Dense layer (null: the notebook's 128, 32).",
    )
    conv_filters: list[Annotated[int, Field(ge=1, le=256), NOT_A_BOOLEAN]] | None = Field(
        None,
        min_length=1,
        max_length=3,
        description="cnn only. Filters of each conv block, 1 to 3 blocks (null: 32, 64). A "
        "block is Conv2D (valid padding, stride 1) → ReLU → 2×2 max pooling.",
    )
    kernel_size: Annotated[int, Field(ge=1, le=7), NOT_A_BOOLEAN] | None = Field(
        None,
        description="cnn only. Side of every conv block's square kernel (null: 3). The feature "
        "maps must keep at least one position after the last block.",
    )
    dense_units: list[Annotated[int, Field(ge=1, le=4096), NOT_A_BOOLEAN]] | None = Field(
        None,
        min_length=1,
        max_length=4,
        description="cnn only. Width of each Dense layer of the head after the conv blocks "
        "(null: 128).",
    )
    seed: Integer = Field(0, ge=0, le=MAX_SEED, description="Seeds weights, shuffling and dropout.")
    exact: StrictBool = Field(
        False,
        description="true: the job always trains alone, never packed with other jobs, so the "
        "same spec and seed reproduce its metrics exactly (on the same machine, backend and "
        "library versions). false: a worker may train it in a pack with compatible jobs; the "
        "pack computes the same model, but its float sums run in another order, so the "
        "metrics match a run alone only approximately.",
    )

    @field_validator(*SHAPE_FIELDS["mlp"], *SHAPE_FIELDS["cnn"])
    @classmethod
    def _of_its_architecture(cls, value: Any, info: ValidationInfo) -> Any:
        architecture = info.data.get("architecture")  # absent when itself invalid
        if value is None or architecture is None or info.field_name in SHAPE_FIELDS[architecture]:
            return value
        owner = next(a for a, fields in SHAPE_FIELDS.items() if info.field_name in fields)
        raise ValueError(
            f"a field of architecture {owner!r}, not of {architecture!r}; architecture "
            f"{architecture!r} is shaped by {', '.join(SHAPE_FIELDS[architecture])}"
        )

    @model_validator(mode="after")
    def _resolve(self) -> JobSpec:
        names = [trick.name for trick in self.tricks]
        refuse_repeated(names)
        self.tricks = [_at_architecture_defaults(t, self.architecture) for t in self.tricks]
        if self.architecture == "mlp":
            self.hidden_units = self.hidden_units or [128, 32]
            dropout = self.trick(Dropout)
            if dropout and dropout.spatial:
                raise ValueError(
                    "dropout: spatial drops whole feature maps, which only architecture 'cnn' "
                    "has; use spatial false on 'mlp'"
                )
        else:
            self.conv_filters = self.conv_filters or [32, 64]
            self.kernel_size = self.kernel_size or 3
            self.dense_units = self.dense_units or [128]
            if self.feature_maps()[-1] < 1:
                raise ValueError(
                    f"conv_filters, kernel_size: {len(self.conv_filters)} conv blocks with "
                    f"{self.kernel_size}×{self.kernel_size} kernels leave no position of a "
                    f"{IMAGE_SHAPE[0]}×{IMAGE_SHAPE[1]} image; use fewer blocks or a smaller "
                    "kernel_size"
                )
        if "early_stopping" in names and self.validation_size == 0:
            raise ValueError(
                "early_stopping watches the validation loss: validation_size must be > 0"
            )
        augmentation = self.trick(Augmentation)
        if augmentation and augmentation.flip and self.dataset == "mnist":
            raise ValueError(
                "augmentation: mirrored digits change meaning; use flip false on mnist"
            )
        order = list(TRICKS)
        self.tricks = sorted(self.tricks, key=lambda trick: order.index(trick.name))
        if self.learning_rate is None:
            self.learning_rate = self.default_learning_rate
        return self

    @property
    def default_learning_rate(self) -> float:
        return SGD_LEARNING_RATE if self.trick(Momentum) is not None else ADAM_LEARNING_RATE

    def template(self) -> dict[str, Any]:
        """The spec as a document to derive others from: a learning rate equal to its
        optimizer's default is left unset, so adding or removing momentum brings the other
        optimizer's default instead of carrying this one over."""
        document = self.model_dump(mode="json")
        if document["learning_rate"] == self.default_learning_rate:
            document["learning_rate"] = None
        return document

    def feature_maps(self) -> list[int]:
        """The side of the square feature maps: the image's, then after each conv block's
        convolution and after its pooling, in turn (cnn; a value below 1 leaves nothing)."""
        sides = [IMAGE_SHAPE[0]]
        for _ in self.conv_filters or []:
            convolved = sides[-1] - (self.kernel_size or 1) + 1
            sides += [convolved, max(convolved, 0) // 2]
        return sides

    @property
    def layer_widths(self) -> list[int]:
        """The dense layers before the output: the MLP's hidden layers or the CNN's head."""
        widths = self.hidden_units if self.architecture == "mlp" else self.dense_units
        assert widths is not None  # a validated spec has its architecture's shape
        return widths

    def trick(self, kind: type[TrickT]) -> TrickT | None:
        """This spec's trick of the given type, or None."""
        return next((t for t in self.tricks if isinstance(t, kind)), None)

    @property
    def class_names(self) -> tuple[str, ...]:
        return DATASET_CLASSES[self.dataset]


def refuse_repeated(names: Sequence[str]) -> None:
    """A trick may be listed once: ValueError naming those listed more often."""
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise ValueError(f"trick {', '.join(map(repr, repeated))} is listed more than once")


def trick_catalogue() -> list[dict[str, Any]]:
    """Every trick with its description, its parameters' JSON schema (defaults, limits) and,
    by architecture, the defaults that differ from the schema's there."""
    catalogue = []
    for name, kind in TRICKS.items():
        schema = kind.model_json_schema()
        parameters = {k: v for k, v in schema["properties"].items() if k != "name"}
        for parameter in parameters.values():
            parameter.pop("title", None)
        description = " ".join((kind.__doc__ or "").split())
        catalogue.append(
            {
                "name": name,
                "description": description,
                "parameters": parameters,
                "architecture_defaults": _architecture_defaults(name),
            }
        )
    return catalogue


def _architecture_defaults(name: str) -> dict[str, dict[str, Any]]:
    """{"cnn": {"rate": 0.25}}: each architecture's defaults that differ from the class's."""
    own = TRICKS[name]().model_dump()
    differing = {
        architecture: {k: v for k, v in trick_defaults(name, architecture).items() if v != own[k]}
        for architecture in ARCHITECTURE_DEFAULTS
    }
    return {architecture: params for architecture, params in differing.items() if params}
