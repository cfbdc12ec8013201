"""What training produces, as it travels from the worker's run through the store to the
analysis and the API: one epoch's metrics, and the final model's scores. One type each, so
that a field added or renamed is added or renamed once."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EpochRow(BaseModel):
    """One epoch's metrics. Every *_loss is the plain cross-entropy, comparable across tricks;
    train_objective is what the optimizer minimised."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    epoch: int = Field(description="From 1.")
    train_loss: float = Field(description="Cross-entropy, averaged over the epoch's steps.")
    train_accuracy: float
    train_objective: float = Field(
        description="The loss minimised: cross-entropy plus L2 penalty, with label smoothing."
    )
    val_loss: float | None
    val_accuracy: float | None
    test_loss: float
    test_accuracy: float
    learning_rate: float = Field(description="At the end of the epoch.")
    seconds: float = Field(description="Training and validation time of the epoch.")

    @property
    def gap(self) -> float | None:
        """The generalisation gap, train minus validation accuracy (no validation split: none)."""
        return None if self.val_accuracy is None else self.train_accuracy - self.val_accuracy


class JobResult(BaseModel):
    """The saved model's scores, evaluated once training ended (dropout off, best weights
    restored when early stopping was on)."""

    model_config = ConfigDict(frozen=True)

    epochs_trained: int
    parameters: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    test_loss: float
    test_accuracy: float
    seconds: float = Field(description="Wall time of the whole training, evaluation included.")
