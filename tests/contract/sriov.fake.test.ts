import { FakeHost } from "../fake/host";
import { fakeLabKernel } from "../fake/lab";
import { sriovContract } from "./sriov.contract";

const k = fakeLabKernel();
const host = new FakeHost(k);
sriovContract(describe, () => ({
    host,
    async hold(_vf, group) {
        const pid = k.hold(`/dev/vfio/${group}`, "qemu-system-x86");
        return async () => k.release(pid);
    },
}));
