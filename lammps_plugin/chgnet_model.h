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

// Directed edges of the model contract (DESIGN.md): edge k goes from node
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
};

class TorchModel {
 public:
  // Loads an exported TorchScript file onto `device` ("cpu", "cuda", "cuda:1").
  // Throws std::runtime_error with a one-line reason on any failure.
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

  // torch intra-op threads (n > 0); returns the number now in use.
  static int set_num_threads(int n);
  static int num_threads();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  double cutoff_ = 0.0;
  std::string metadata_;
  std::string dtype_name_;
  std::string device_name_;
};

}    // namespace crossfunctional

#endif
