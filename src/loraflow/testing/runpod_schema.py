"""The part of RunPod's GraphQL schema that loraflow and the `runpod` SDK use, and the emulator's GPU types.

Names and shapes are those the SDK 1.11 sends and reads (`runpod/api/queries/*.py`, `mutations/pods.py`)
and dstack's RunPod client (`podRentInterruptable` with `bidPerGpu`); the emulator validates every request
against this schema with graphql-core, so a query the real API would reject as malformed fails here too.
Prices are per GPU and hour, in the range RunPod listed in 2026.
"""

from __future__ import annotations

from typing import Any

_POD_INPUT = """
  name: String
  imageName: String
  gpuTypeId: String
  cloudType: CloudTypeEnum
  startSsh: Boolean
  supportPublicIp: Boolean
  gpuCount: Int
  volumeInGb: Int
  containerDiskInGb: Int
  minVcpuCount: Int
  minMemoryInGb: Int
  allowedCudaVersions: [String]
  dataCenterId: String
  countryCode: String
  dockerArgs: String
  ports: String
  volumeMountPath: String
  env: [EnvironmentVariableInput]
  templateId: String
  networkVolumeId: String
  minDownload: Int
  minUpload: Int
  instanceId: String
"""

SDL = f"""
enum CloudTypeEnum {{ ALL SECURE COMMUNITY }}
enum PodStatus {{ CREATED RUNNING RESTARTING EXITED PAUSED DEAD TERMINATED }}
scalar Void

input EnvironmentVariableInput {{ key: String! value: String }}
input PodFilter {{ podId: String! }}
input GpuTypeFilter {{ id: String }}
input GpuLowestPriceInput {{ gpuCount: Int }}
input PodFindAndDeployOnDemandInput {{ {_POD_INPUT} }}
input PodRentInterruptableInput {{ bidPerGpu: Float! {_POD_INPUT} }}
input PodTerminateInput {{ podId: String! }}
input PodStopInput {{ podId: String! }}

type Port {{ ip: String isIpPublic: Boolean privatePort: Int publicPort: Int type: String }}
type PodRuntime {{ uptimeInSeconds: Int ports: [Port] }}
type Machine {{ podHostId: String gpuDisplayName: String }}
type Pod {{
  id: String!
  name: String
  containerDiskInGb: Int
  costPerHr: Float
  desiredStatus: PodStatus
  dockerArgs: String
  dockerId: String
  env: [String]
  gpuCount: Int
  imageName: String
  lastStatusChange: String
  machineId: String
  memoryInGb: Float
  podType: String
  port: Int
  ports: String
  uptimeSeconds: Int
  vcpuCount: Float
  volumeInGb: Float
  volumeMountPath: String
  runtime: PodRuntime
  machine: Machine
}}
type LowestPrice {{ minimumBidPrice: Float uninterruptablePrice: Float }}
type GpuType {{
  id: String!
  displayName: String
  manufacturer: String
  memoryInGb: Int
  cudaCores: Int
  maxGpuCount: Int
  secureCloud: Boolean
  communityCloud: Boolean
  securePrice: Float
  communityPrice: Float
  oneMonthPrice: Float
  threeMonthPrice: Float
  oneWeekPrice: Float
  communitySpotPrice: Float
  secureSpotPrice: Float
  lowestPrice(input: GpuLowestPriceInput): LowestPrice
}}
type User {{ id: String pods: [Pod] }}
type Query {{
  myself: User
  pod(input: PodFilter): Pod
  gpuTypes(input: GpuTypeFilter): [GpuType]
}}
type Mutation {{
  podFindAndDeployOnDemand(input: PodFindAndDeployOnDemandInput): Pod
  podRentInterruptable(input: PodRentInterruptableInput!): Pod
  podTerminate(input: PodTerminateInput!): Void
  podStop(input: PodStopInput!): Pod
}}
"""

# id, display name, GB, max per machine, secure $/GPU/h, community, secure spot, community spot (None: not offered)
_TYPES: list[tuple[str, str, int, int, float | None, float | None, float | None, float | None]] = [
    ("NVIDIA GeForce RTX 3090", "RTX 3090", 24, 8, 0.43, 0.22, 0.26, 0.12),
    ("NVIDIA GeForce RTX 4090", "RTX 4090", 24, 8, 0.69, 0.34, 0.40, 0.20),
    ("NVIDIA RTX A6000", "RTX A6000", 48, 8, 0.76, 0.49, 0.45, 0.25),
    ("NVIDIA L40S", "L40S", 48, 8, 0.86, None, 0.51, None),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe", 80, 8, 1.64, 1.19, 0.82, 0.60),
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 80, 8, 2.99, 2.69, 1.75, 1.49),
    ("NVIDIA RTX A4000", "RTX A4000", 16, 8, 0.32, 0.17, 0.20, 0.09),
]


def gpu_types() -> list[dict[str, Any]]:
    """The GPU types as RunPod's `gpuTypes` lists them (`lowestPrice` answers per gpuCount)."""
    rows = []
    for gid, name, gb, most, secure, community, secure_spot, community_spot in _TYPES:
        rows.append(
            {
                "id": gid,
                "displayName": name,
                "manufacturer": "Nvidia",
                "memoryInGb": gb,
                "cudaCores": 0,
                "maxGpuCount": most,
                "secureCloud": secure is not None,
                "communityCloud": community is not None,
                "securePrice": secure,
                "communityPrice": community,
                "secureSpotPrice": secure_spot,
                "communitySpotPrice": community_spot,
                "oneWeekPrice": None,
                "oneMonthPrice": None,
                "threeMonthPrice": None,
            }
        )
    return rows
