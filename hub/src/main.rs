fn main() {
    println!("storesync-hub: not yet built");
}
