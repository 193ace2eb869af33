import { FakeHost } from "../fake/host";
import { fakeLabKernel } from "../fake/lab";
import { mdevContract } from "./mdev.contract";

const k = fakeLabKernel();
const host = new FakeHost(k);
mdevContract(describe, () => ({
    host,
    async hold(_uuid, group) {
        const pid = k.hold(`/dev/vfio/${group}`, "qemu-system-x86");
        return async () => k.release(pid);
    },
}));
