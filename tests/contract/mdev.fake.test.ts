import { FakeHost } from "../../provider/host/fake/host";
import { fakeLabKernel } from "../../provider/host/fake/lab";
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
