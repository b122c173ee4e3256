"""Trains a classifier on sequential / permuted MNIST or digits (ALGORITHM §6).

See ``experiments/configs/mnist.py``.

  relscreen-mnist --model=RelLSTM --epochs=30 --workdir=runs/pdigits_rellstm
  relscreen-mnist --dataset=mnist --data_dir=/data/mnist --model=RelLSTM --workdir=runs/pmnist
"""


from relscreen_experiments import flags_lib
from relscreen_experiments import train_classifier
from relscreen_experiments.configs import mnist as mnist_config
from relscreen import datasets

_FLAGS = flags_lib.define_flags(mnist_config.FIELDS)
_WORKDIR = flags_lib.define_workdir()


def load(config) -> datasets.Splits:
  if config.dataset == "mnist":
    if not config.data_dir:
      raise ValueError("--dataset=mnist needs --data_dir (the folder of the IDX files)")
    splits = datasets.load_mnist(config.data_dir)
  else:
    if config.data_dir:
      raise ValueError("--data_dir is only read with --dataset=mnist")
    splits = datasets.load_digits()
  return datasets.permute(splits) if config.permute else splits


def main(argv):
  flags_lib.run_training(
      argv, _FLAGS, _WORKDIR,
      lambda config, wd: train_classifier.train_and_evaluate(config, wd, load(config)),
      mnist_config.POSITIVE, mnist_config.NON_NEGATIVE)


def run():
  """Console-script entry point."""
  flags_lib.run_app(main)


if __name__ == "__main__":
  run()
