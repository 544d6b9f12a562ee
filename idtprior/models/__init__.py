"""Model side of idtprior: 3D ResNet, memory bank, IR / LA objectives, clip data, Lightning pretraining."""

from idtprior.models.checkpoints import load_encoder
from idtprior.models.clustering import cluster_bank, cluster_joint, kmeans, knn_accuracy, knn_classify, lloyd_kmeans
from idtprior.models.data import (ArrayClipSource, ClipDataModule, ClipDataset, ClipSource, EpochSampler,
                                  FunctionClipSource, moving_squares, transform_clip)
from idtprior.models.lightning import PretrainModule, PretrainParams
from idtprior.models.losses import draw_noise, ir_nce_loss, ir_softmax_loss, la_loss, nce_log_z
from idtprior.models.memory_bank import MemoryBank, init_bank
from idtprior.models.resnet3d import ResNet3d, resnet3d
from idtprior.models.training import TrainResult, compute_embeddings, export_encoder, train

__all__ = [
    "ArrayClipSource", "ClipDataModule", "ClipDataset", "ClipSource", "EpochSampler", "FunctionClipSource",
    "MemoryBank", "PretrainModule", "PretrainParams", "ResNet3d", "TrainResult", "cluster_bank", "cluster_joint",
    "compute_embeddings", "draw_noise", "export_encoder", "init_bank", "ir_nce_loss", "ir_softmax_loss", "kmeans",
    "knn_accuracy", "knn_classify", "la_loss", "lloyd_kmeans", "load_encoder", "moving_squares", "nce_log_z", "resnet3d", "train",
    "transform_clip",
]
