export { startIngress, type IngressHandle } from './ingress.js';
