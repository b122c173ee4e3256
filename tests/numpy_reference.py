"""Plain, slow, per-row NumPy references for ALGORITHM §2-3, written independently of
the library: Python lists for the memories, float64, one batch row at a time."""

import numpy as np

RNN_FAMILY = ("RNN", "MemRNN", "RelRNN")
ATTENTIVE = ("MemRNN", "MemLSTM", "RelRNN", "RelLSTM")


def phi_fn(name, z, mod_b=None):
  return {"tanh": np.tanh, "relu": lambda a: np.maximum(a, 0), "identity": lambda a: a,
          "sigmoid": lambda a: 1 / (1 + np.exp(-a)),
          "modrelu": lambda a: np.sign(a) * np.maximum(np.abs(a) + mod_b, 0)}[name](z)


def sigmoid(z):
  return 1 / (1 + np.exp(-z))


class Screen:
  """ALGORITHM §3 and §11 for one row: S (oldest first) and R as lists of
  [time, score, value, steps in S].

  ``relevance``: sum (the paper's), mean (the sum over the steps spent in S), max,
  decay (gamma * score + weight, in S and R). ``eviction``: top (the paper's),
  fifo (replace the state in R with the smallest time), reservoir (Algorithm R:
  the n-th candidate replaces slot ``draw(n)`` if that is < rho; the draws are
  given, so both sides use the same random numbers).
  """

  def __init__(self, nu, rho, relevance="sum", eviction="top", decay=0.9, draw=None):
    self.nu, self.rho, self.S, self.R = nu, rho, [], []
    self.relevance, self.eviction, self.decay, self.draw = relevance, eviction, decay, draw
    self.seen = 0

  def add_weights(self, weights, r_weights=()):
    """weights[j] goes to the j-th oldest state of S, r_weights[j] to R's j-th slot."""
    for entry, w in zip(self.S, weights):
      entry[3] += 1
      if self.relevance == "max":
        entry[1] = max(entry[1], w)
      elif self.relevance == "decay":
        entry[1] = self.decay * entry[1] + w
      else:
        entry[1] += w
    if self.relevance == "decay":
      for entry, w in zip(self.R, r_weights):
        entry[1] = self.decay * entry[1] + w

  def store(self, time, value):
    """Screens S's oldest if S is full, then appends. Returns (time, score, admitted)."""
    info = (-1, np.nan, False)
    if len(self.S) == self.nu:
      cand = self.S.pop(0)
      if self.relevance == "mean":
        cand[1] = cand[1] / max(cand[3], 1)
      admitted = False
      if self.rho == 0:
        pass
      elif len(self.R) < self.rho:
        self.R.append(cand)
        admitted = True
      elif self.eviction == "fifo":
        self.R[int(np.argmin([r[0] for r in self.R]))] = cand
        admitted = True
      elif self.eviction == "reservoir":
        j = self.draw(self.seen)
        if j < self.rho:
          self.R[j] = cand
          admitted = True
      else:
        scores = [r[1] for r in self.R]
        j = int(np.argmin(scores))  # first index among ties
        if cand[1] > scores[j]:
          self.R[j] = cand
          admitted = True
      self.seen += 1
      info = (cand[0], cand[1], admitted)
    self.S.append([time, 0.0, value, 0])
    return info


def forward(params, name, x, phi="tanh", nu=2, rho=3, k=1, attn=1.0):
  """Returns h [b, t, h] for model ``name`` with the library's parameter layout."""
  p = {key: np.asarray(v, np.float64) for key, v in params.items()}
  x = np.asarray(x, np.float64)
  batch, length, _ = x.shape
  rnn = name in RNN_FAMILY
  hidden = p["V"].shape[0] if rnn else p["W"].shape[1] // 4
  out = np.zeros((batch, length, hidden))
  for b in range(batch):
    s, c = np.zeros(hidden), np.zeros(hidden)
    screen, full = Screen(nu, rho), []
    for t in range(length):
      if t == 0 or name not in ATTENTIVE:
        mix = s
      else:
        bank = ([e[2] for e in screen.S] + [e[2] for e in screen.R]
                if name.startswith("Rel") else list(full))
        q = s @ p["Va"]
        e = np.array([p["v"] @ np.tanh(q + m @ p["Ua"]) for m in bank])
        alpha = np.exp(e - e.max())
        alpha /= alpha.sum()
        if name.startswith("Rel"):
          screen.add_weights(alpha[:len(screen.S)])
        newest = screen.S[-1][2] if name.startswith("Rel") else full[-1]
        context = sum(a * m for a, m in zip(alpha, bank))
        mix = 0.5 * (newest + (attn if rnn else 1.0) * context)
      if rnn:
        a = x[b, t] @ p["U"] + p["b"] + mix @ p["V"]
        h = phi_fn(phi, a, p.get("mod_b"))
      else:
        g = np.concatenate([mix, x[b, t]]) @ p["W"] + p["b"]
        f, i, o, gg = np.split(g, 4)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(gg)
        h = sigmoid(o) * np.tanh(c)
      if name not in ATTENTIVE:
        s = h
      elif t == 0:
        s = a if rnn else s  # ALGORITHM §2: s_0 = a_0 (RNN family), h_init (LSTM family)
      else:
        s = mix
      if t % k == 0:
        if name.startswith("Rel"):
          screen.store(t, h)
        else:
          full.append(h)
      out[b, t] = h
  return out
