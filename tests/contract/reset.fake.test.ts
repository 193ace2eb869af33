import { FakeHost } from "../fake/host";
import { fakeLabKernel } from "../fake/lab";
import { resetContract } from "./reset.contract";

const host = new FakeHost(fakeLabKernel());
resetContract(describe, () => ({ host }));
