/** The fake machine of the tests: a model of the kernel's sysfs (PCI, IOMMU, mdev, SR-IOV, kvmfr) and of QEMU. */
export { FakeHost, fileBackedFakeHost } from "./host";
export { FakeKernel, FakeErrno, FakeHang } from "./kernel";
export { fakeLabKernel, fakeKernelWithoutIommu } from "./lab";
