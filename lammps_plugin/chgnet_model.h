// Thin wrapper around the exported TorchScript CHGNet (crossfunctional).
//
// This header deliberately includes no torch and no LAMMPS header: torch and
// LAMMPS each bundle their own copy of the {fmt} library, so the two are kept
// in separate translation units (chgnet_model.cpp sees torch only,
// pair_chgnet.cpp sees LAMMPS only) and talk through plain std types.

#ifndef CROSSFUNCTIONAL_CHGNET_MODEL_H
#define CROSSFUNCTIONAL_CHGNET_MODEL_H

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace crossfunctional {

// Directed edges of the model contract (docs/design.md): edge k goes from node
// src[k] to node dst[k] with integer image shift shift[3k..3k+2] and vector
// vec[3k..3k+2] = r_dst + S . cell - r_src (Angstrom). Every edge's reverse
// (dst, src, -S) is present.
struct GraphInput {
  std::vector<int64_t> atomic_numbers;    // [N]
  std::vector<int64_t> edge_index;        // [2 * E]: E sources, then E targets
  std::vector<int64_t> edge_shifts;       // [E * 3]
  std::vector<double> edge_vectors;       // [E * 3]
  int64_t num_edges() const { return static_cast<int64_t>(edge_shifts.size() / 3); }
};

struct GraphOutput {
  std::vector<double> site_energies;    // [N] eV, AtomRef included
  std::vector<double> magmoms;          // [N] muB
  std::vector<double> grad;             // [E * 3] dE/d(edge vectors), eV/Angstrom
  int64_t num_angles = 0;               // angles of the graph (evaluate_segments only)
};

// Ghost exchange of per-atom rows for the multi-rank pass, implemented by the
// pair style with LAMMPS' forward and reverse communication. `rows` holds
// one row of `width` doubles per graph node, node index = LAMMPS local or
// ghost atom index.
class FeatureExchange {
 public:
  virtual ~FeatureExchange() = default;
  // every ghost row := its owner's row
  virtual void forward(std::vector<double> &rows, int width) = 0;
  // every owner row += the rows of its ghosts; ghost rows := 0 (the
  // transpose of forward)
  virtual void reverse(std::vector<double> &rows, int width) = 0;
};

class TorchModel {
 public:
  // Loads an exported TorchScript file onto `device` ("cpu", "cuda", "cuda:1").
  // A path ending in ".pt2" is an ahead-of-time package (crossfunctional
  // export --aot): its TorchScript file (same name, ".pt") is loaded for the
  // graph construction, and the package, after its key (torch version, CPU
  // instruction set, device, dtype, hash of the .pt file) is checked, runs
  // the network in evaluate(). Throws std::runtime_error with a one-line
  // reason on any failure, a package that does not match included.
  TorchModel(const std::string &path, const std::string &device);
  ~TorchModel();
  TorchModel(const TorchModel &) = delete;
  TorchModel &operator=(const TorchModel &) = delete;

  double cutoff() const { return cutoff_; }                        // Angstrom
  const std::string &metadata_json() const { return metadata_; }    // JSON text
  const std::string &dtype_name() const { return dtype_name_; }     // "float32"/"float64"
  const std::string &device_name() const { return device_name_; }

  // One forward + backward pass. Throws std::runtime_error on failure.
  void evaluate(const GraphInput &in, GraphOutput &out);

  // Domain-decomposed pass on an unfolded graph (nodes: local + ghost atoms,
  // shifts zero). The model runs segment by segment (seg_first, seg_mid,
  // seg_last); between segments the atom features go through
  // exchange->forward, and in the backward pass, segment by segment, their
  // adjoints through exchange->reverse. With exchange == nullptr the
  // segments run back to back (no exchange). The energy differentiated is
  // sum_i weight[i] * site_energy[i] (weight 1 for the local atoms this rank
  // owns, 0 for ghosts). The exchange hooks are called the same number of
  // times on every rank whatever the graph, also with no nodes.
  void evaluate_segments(const GraphInput &in, const std::vector<double> &weight,
                         FeatureExchange *exchange, GraphOutput &out);

  bool compiled() const { return compiled_; }                  // evaluate() runs an ahead-of-time package
  int64_t feature_width() const { return feature_width_; }    // atom feature width (64)
  int num_segments() const { return num_segments_; }          // n_conv
  double bond_cutoff() const { return bond_cutoff_; }          // short-bond cutoff (3 Angstrom)

  // torch intra-op threads (n > 0); returns the number now in use.
  static int set_num_threads(int n);
  static int num_threads();

 private:
  void load_package(const std::string &package_path, const std::string &torchscript_path);
  struct Impl;
  std::unique_ptr<Impl> impl_;
  bool compiled_ = false;
  double cutoff_ = 0.0;
  double bond_cutoff_ = 0.0;
  int64_t feature_width_ = 0;
  int num_segments_ = 0;
  std::string metadata_;
  std::string dtype_name_;
  std::string device_name_;
};

}    // namespace crossfunctional

#endif
